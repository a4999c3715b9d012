"""The training of one run: freeze cases, compiled steps, the fit loop, checkpoints, the prefix
cache, pretraining and the run's record."""
