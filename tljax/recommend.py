"""`python -m tljax.recommend --workdir=DIR [budget flags]`: an existing sweep's cases and the
recommendation under another budget, without training."""

import sys

from absl import flags

from tljax.decision import console
from tljax.decision import pareto
from tljax.decision import recommend
from tljax.decision import stats
from tljax.runtime import cli
from tljax.sweep import layout


def _flags():
  """The command line's flags, on their own FlagValues (importing this module defines none)."""
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'A tljax workdir holding summary.json.', flag_values=fv)
  flags.DEFINE_float('max_energy_per_example_j', None, 'Energy budget in J per training '
                     "example; 0 = no limit (default: the run's config).", lower_bound=0,
                     flag_values=fv)
  flags.DEFINE_float('max_train_memory_mb', None, 'Memory budget in MiB (2**20 bytes); 0 = no '
                     "limit (default: the run's config).", lower_bound=0, flag_values=fv)
  flags.DEFINE_float('min_accuracy', None, 'Least mean test accuracy, a fraction; 0 = no limit '
                     "(default: the run's config).", lower_bound=0, upper_bound=1, flag_values=fv)
  flags.DEFINE_enum('memory', None, list(pareto.MEMORY_FIELDS), 'The memory the front and the '
                    "budget read: xla or device (default: the run's budget_memory).",
                    flag_values=fv)
  flags.DEFINE_enum('energy', None, list(pareto.ENERGY_FIELDS), 'The energy the front and the '
                    'budget read: mac (FLOPs / 2 x e_mac_j) or memory (plus bytes accessed x '
                    "e_byte_j) (default: the run's budget_energy).", flag_values=fv)
  flags.DEFINE_boolean('include_incomplete', None, 'Count cases with runs missing or failed on '
                       "the front and in the recommendation (default: the run's config).",
                       flag_values=fv)
  return fv


def _load_summary(workdir):
  return layout.read_output(
      workdir, layout.SUMMARY,
      f'no summary.json in {workdir}: run python launch.py --workdir={workdir} first',
      'JSON summary')


USAGE = 'python -m tljax.recommend --workdir=DIR [budget flags]'
ABOUT = ("Prints a finished sweep's table and the case to pick under a budget, from the "
         "workdir's summary.json alone (no training, no JAX). A flag left out takes the run's "
         'config value. docs/decision.md explains the answer.')
EXAMPLES = ('python -m tljax.recommend --workdir=artifacts/default '
            '--max_energy_per_example_j=1.5e-4',
            'python -m tljax.recommend --workdir=artifacts/families --max_train_memory_mb=3 '
            '--memory=device --min_accuracy=0.9')


def run_cli(argv):
  """`python -m tljax.recommend --workdir=DIR [budget flags]`: prints the cases and the
  recommendation; returns the exit status (1 with a one-line error on stderr)."""
  fv = _flags()
  if cli.asks_help(argv):
    print(cli.help_text(USAGE, ABOUT, fv, EXAMPLES))
    return 0
  try:
    cli.parse_workdir_args(fv, argv, 'the workdir of a tljax run (holding summary.json)')
    summary = _load_summary(fv.workdir)
    budget = recommend.budget_of(summary.get('config') or {} if isinstance(summary, dict) else {})
    budget.update({k: fv[k].value for k in (*recommend.LIMITS, 'memory', 'energy',
                                            'include_incomplete') if fv[k].value is not None})
    cases = stats.cases_of(summary, memory=budget['memory'], energy=budget['energy'],
                           include_incomplete=budget['include_incomplete'])
    rec = recommend.recommend(cases, **budget)
  except (flags.Error, ValueError) as e:
    sys.stderr.write(f'tljax: error: {e}\n')
    return 1
  except (KeyError, TypeError, AttributeError) as e:  # JSON, but not a summary's shape
    sys.stderr.write(f'tljax: error: {fv.workdir}/summary.json is not a tljax summary '
                     f'({type(e).__name__}: {e})\n')
    return 1
  print(console.table({'cases': cases, 'recommendation': rec,
                       'config': {'budget_memory': budget['memory'],
                                  'budget_energy': budget['energy'],
                                  'include_incomplete': budget['include_incomplete']}}))
  return 0


if __name__ == '__main__':
  sys.exit(run_cli(sys.argv))
