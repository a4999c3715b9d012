"""The cluster: a sweep as submitit jobs (local or SLURM), their bookkeeping and their gather.
The core never imports it; the entry point (tljax.run) chooses inline or jobs."""
