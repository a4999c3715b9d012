"""`python -m tljax.proxies --workdir=A [--workdir=B ...]`: the selection proxies of several
finished sweeps (their proxies.json) pooled into one markdown table."""

import sys

from absl import flags

from tljax.proxies import pool
from tljax.runtime import cli

USAGE = 'python -m tljax.proxies --workdir=A [--workdir=B ...]'
ABOUT = ("Pools the proxies.json of finished sweeps (other models, other datasets) into one "
         'markdown table: per sweep and proxy its rank agreement with the mean test accuracy '
         '(Kendall tau, Spearman rho, 95 % bootstrap intervals), its regret at 1 and its cost; '
         'then each proxy\'s means over the sweeps. docs/proxies.md defines every column.')
EXAMPLES = ('python -m tljax.proxies --workdir=artifacts/families '
            '--workdir=artifacts/families_mobilenet',)


def _flags():
  """The command line's flags, on their own FlagValues (importing this module defines none)."""
  fv = flags.FlagValues()
  flags.DEFINE_multi_string('workdir', None, 'A finished tljax workdir holding proxies.json; '
                            'repeat it to pool several sweeps.', flag_values=fv)
  return fv


def run_cli(argv):
  """Prints the pooled table of the --workdir flags; returns the exit status (1 with a
  one-line error on stderr)."""
  fv = _flags()
  if cli.asks_help(argv):
    print(cli.help_text(USAGE, ABOUT, fv, EXAMPLES))
    return 0
  try:
    cli.parse_workdir_args(fv, argv, 'a finished workdir holding proxies.json')
    docs = [pool.load(w) for w in fv.workdir]
    text = pool.markdown(docs, fv.workdir)
  except (flags.Error, ValueError) as e:
    sys.stderr.write(f'tljax: error: {e}\n')
    return 1
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(run_cli(sys.argv))
