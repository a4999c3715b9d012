"""Case families side by side (docs/cases.md "Case families"): the offline digits transfer of
configs/default.py with the six "last N" cases, biases only (BatchNorm statistics frozen, and
on batch statistics), BatchNorm only and two single blocks, each over three seeds."""

from configs import default


def get_config():
  c = default.get_config()
  c.name = 'families'
  c.cases = ('last:1', 'last:4', 'last:9', 'last:11', 'last:17', 'last:23', 'bias:23',
             'bias_batchstats:23', 'norm:23', 'block:block1', 'block:block3')
  c.seeds = (0, 1, 2)
  # A tenth of each class held out: the proxies' short training and the searches' rungs decide
  # on it (python launch.py --config=configs/families.py --config.search=halving).
  c.validation_fraction = 0.1
  return c
