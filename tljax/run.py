"""Command-line entry: runs train_and_evaluate and turns expected failures into one-line errors."""

import signal
import sys

from absl import logging

from tljax.cluster import launcher
from tljax.config import checks
from tljax.decision import console
from tljax.proxies import store as proxy_store
from tljax.runtime import errors
from tljax.runtime import interrupt
from tljax.runtime import parallel
from tljax.sweep import layout
from tljax.sweep import runner



def train_and_evaluate(config, workdir):
  """The experiment of `config` into `workdir`: inline in this process (tljax.sweep.runner), or
  as one job per (case, seed) with config.launcher 'local' or 'slurm' (tljax.cluster.launcher;
  None when it does not wait for them). Returns the summary."""
  checks.validate(config)
  if config.launcher == 'inline':
    return runner.train_and_evaluate(config, workdir)
  return launcher.launch(config, workdir)


def main(config, workdir):
  console.quiet_libraries()
  try:
    summary = train_and_evaluate(config, workdir)
  except interrupt.Interrupted as e:  # checkpointed: one line that says how to go on
    sys.stderr.write(f'tljax: stopped by {signal.Signals(e.signum).name} ({e.detail}); finished '
                     f'cases are kept in {workdir}. To resume, run the same command: '
                     f'{interrupt.resume_command()}\n')
    sys.exit(e.exit_code)
  except errors.USER_ERRORS as e:
    logging.debug('Traceback', exc_info=True)
    sys.exit(f'tljax: error: {e}')
  if summary is None:  # jobs submitted without waiting: the launcher said where they are
    return
  if not parallel.is_writer():  # process 0 prints the table of a multi-process run
    return
  figures = [layout.file_path(workdir, n) for n in (layout.FIGURE, layout.PARETO)]
  board = proxy_store.console(workdir, summary)  # before the answer: the console ends with it
  if board:
    print('\n' + board)
  print(f'\n{summary["name"]}: {summary["model"]}, {len(summary["cases"])} cases'
        + (' (dry run: one step on mock data)' if summary['dry_run'] else '') + '\n'
        + console.table(summary, figures) + f'\nWritten to {workdir}/ ({layout.SUMMARY}, '
        f'{layout.RESULTS}: a row per case, {layout.RUNS}: a row per case and seed)')
