"""Selection proxies: per-case scores that predict the cases' test accuracy before they train,
and the leaderboard that ranks them against the exhaustive sweep (docs/proxies.md)."""
