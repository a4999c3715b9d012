"""Runs one tljax experiment: `python launch.py --config=configs/test2.py [--config.FIELD=VALUE]`."""

import os
import sys
import textwrap

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # config files import `configs.base`

from tljax.runtime import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

cli.quiet_tensorflow()  # before anything imports TensorFlow: no C++ log lines on the console

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from tljax.runtime import interrupt  # pylint: disable=g-import-not-at-top,wrong-import-position

interrupt.install()  # from here on, SIGINT/SIGTERM stop the run cleanly with a checkpoint

USAGE = ('python launch.py [--config=configs/NAME.py[:ARG]] [--config.FIELD=VALUE ...] '
         '[--workdir=DIR]')
ABOUT = ('Fine-tunes the pretrained model once per freeze case and seed of the config, then '
         'prints one row per case (test accuracy with its 95 % interval, energy and memory per '
         'training example, the Pareto front) and, under a budget, the case to pick. Outputs go '
         'to the workdir (docs/outputs.md); the same command resumes a stopped run and trains '
         'only the runs a grown config adds.')
EXAMPLES = (
    'python launch.py    # the offline default: digits 0-4 -> 5-9, six cases, 2-4 minutes on CPU',
    'python launch.py --config=configs/test2.py --config.dry_run=True    # costs, no training',
    "python launch.py --config.seeds='(0,1,2)' --config.max_energy_per_example_j=1.5e-4",
)


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


def _help(argv):
  """Usage, the flags and every config field with the given config's values; exit status 0."""
  from configs import base  # pylint: disable=g-import-not-at-top
  from tljax.config import docs  # pylint: disable=g-import-not-at-top
  _parse_flags([a for a in argv if a not in cli.HELP_FLAGS])
  lines = [f'Usage: {USAGE}', '', *textwrap.wrap(ABOUT, cli.WIDTH), '', 'Flags:',
           '  --config=FILE[:ARG]', '      ' + flags.FLAGS['config'].help
           + ' (default: configs/default.py)',
           '  --workdir=DIR', '      ' + flags.FLAGS['workdir'].help, '',
           *docs.help_lines(_CONFIG.value, base.get_config()), '', 'Examples:',
           *(f'  {e}' for e in EXAMPLES)]
  print('\n'.join(lines))
  sys.exit(0)


def _parse_flags(argv):
  """absl's parser, with a one-line message for a mistyped config field or bad value."""
  if cli.asks_help(argv):
    _help(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = str(e)
    if 'Traceback' in msg:  # an error raised by the config file: its last line says what
      msg = msg.split('Traceback')[0].strip() + ' ' + msg.strip().splitlines()[-1].strip()
    sys.exit(f'tljax: error: {msg}\nPass --help to see the flags and config fields.')
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
