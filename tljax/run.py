"""Command-line entry: runs train_and_evaluate and turns expected failures into one-line errors."""

import signal
import sys

from absl import logging

from tljax import console
from tljax import data
from tljax import interrupt
from tljax import launcher
from tljax import parallel
from tljax import sweep
from tljax import weights

# Failures caused by the user's input or environment: shown as a message, not a traceback.
USER_ERRORS = (ValueError, OSError, MemoryError, FloatingPointError,
               data.DatasetUnavailableError, weights.WeightsUnavailableError,
               launcher.JobsFailedError, parallel.ProcessesError)


def main(config, workdir):
  console.quiet_libraries()
  try:
    summary = sweep.train_and_evaluate(config, workdir)
  except interrupt.Interrupted as e:  # checkpointed: one line that says how to go on
    sys.stderr.write(f'tljax: stopped by {signal.Signals(e.signum).name} ({e.detail}); finished '
                     f'cases are kept in {workdir}. To resume, run the same command: '
                     f'{interrupt.resume_command()}\n')
    sys.exit(e.exit_code)
  except USER_ERRORS as e:
    logging.debug('Traceback', exc_info=True)
    sys.exit(f'tljax: error: {e}')
  if summary is None:  # jobs submitted without waiting: the launcher said where they are
    return
  if not parallel.is_writer():  # process 0 prints the table of a multi-process run
    return
  print(f'\n{summary["name"]}: {summary["model"]}, {len(summary["cases"])} cases'
        + (' (dry run: one step on mock data)' if summary['dry_run'] else '') + '\n'
        + console.table(summary, workdir) + f'\nWritten to {workdir}/ (summary.json, '
        'results.csv: a row per case, runs.csv: a row per case and seed)')
