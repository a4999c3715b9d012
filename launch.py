"""Runs one tljax experiment: `python launch.py --config=configs/test2.py [--config.FIELD=VALUE]`."""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.abspath(__file__))
# TensorFlow (the input pipeline) prints C++ INFO lines at import; warnings and errors stay.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
sys.path.insert(0, ROOT)  # config files import `configs.base`

from tljax.runtime import interrupt  # pylint: disable=g-import-not-at-top,wrong-import-position

interrupt.install()  # from here on, SIGINT/SIGTERM stop the run cleanly with a checkpoint


def _bad_override(e):
  msg = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  if msg.startswith("'"):  # ml_collections nests the KeyError's repr
    msg = msg.encode().decode('unicode_escape').replace("'", '').replace('\n', ' ')
  sys.exit(f'tljax: error: unknown or bad --config override: {msg}')


try:  # ml_collections applies --config.* overrides already here
  _CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(ROOT, 'configs', 'default.py'),
      'Experiment config file (configs/*.py), optionally with :ARG.', lock_config=True)
except (AttributeError, KeyError, TypeError, ValueError) as err:
  _bad_override(err)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (default artifacts/<config name>).')


def _parse_flags(argv):
  """absl's parser, with a one-line message for a mistyped config field or bad value."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = str(e)
    if 'Traceback' in msg:  # an error raised by the config file: its last line says what
      msg = msg.split('Traceback')[0].strip() + ' ' + msg.strip().splitlines()[-1].strip()
    sys.exit(f'tljax: error: {msg}\nPass --helpshort to see the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _bad_override(e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from tljax import run  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  run.main(config, _WORKDIR.value or os.path.join('artifacts', config.name))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
