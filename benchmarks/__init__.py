"""tljax's benchmarks against the peers a user would pick (run from the repo root: python -m benchmarks.<name>)."""
