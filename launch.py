"""Runs one tljax experiment: `python launch.py --config=configs/test2.py [--config.FIELD=VALUE]`."""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `configs` imports `configs.base`

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'default.py'),
    'Experiment config file (configs/*.py), optionally with :ARG.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (default artifacts/<config name>).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from tljax import train  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  train.train_and_evaluate(config, _WORKDIR.value or os.path.join('artifacts', config.name))


if __name__ == '__main__':
  app.run(main)
