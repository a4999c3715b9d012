"""The short-training proxy: a case's validation accuracy after a fraction of its training.

The search records it on each run (`short_val_accuracy`, after `short_training_fraction` of the
run's steps, and `short_train_s`, the wall seconds of that part); this module only reads it. A
run without the field has no score: the proxy is missing for its case, never invented.
"""

NAME = 'short_training'
FIELD, SECONDS = 'short_val_accuracy', 'short_train_s'


def scores(runs, seed):
  """{case: {'score', 'cost_s'}} from the run records of `seed` (the seed the other proxies
  use) that carry FIELD; cost_s is their SECONDS (0 when absent)."""
  out = {}
  for r in runs:
    if r.get('seed') == seed and r.get(FIELD) is not None:
      out[r['case']] = {'score': float(r[FIELD]), 'cost_s': float(r.get(SECONDS) or 0.0)}
  return out
