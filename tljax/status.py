"""`python -m tljax.status --workdir=DIR`: a sweep's jobs with their states, and its finished runs."""

import json
import os
import sys

from tljax.cluster import jobs as jobs_lib
from tljax.runtime import cli
from tljax.sweep import fingerprints
from tljax.sweep import layout


def _read_json(path, what):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ValueError(f'{path} is not a readable {what}: {e}') from None


def fingerprint(workdir):
  """The fingerprint of the workdir's run, from its config.json and data.json."""
  if not os.path.isdir(workdir):
    raise ValueError(f'--workdir={workdir}: no such directory')
  path = layout.file_path(workdir, layout.CONFIG)
  if not os.path.exists(path):
    raise ValueError(f'{workdir} holds no tljax run (no config.json): run python launch.py '
                     f'--workdir={workdir} first')
  config = _read_json(path, 'tljax config')
  data_path = layout.file_path(workdir, layout.DATA)
  data = _read_json(data_path, 'data identity') if os.path.exists(data_path) else {}
  return fingerprints.run_fingerprint(config, data_identity=data)


def finished_runs(workdir, fp):
  """[(run, record)] of cases/*.json made by this workdir's config, data and tool versions
  (sorted by run)."""
  d = layout.file_path(workdir, layout.RECORDS)
  out = []
  for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if name.endswith('.json'):
      rec = _read_json(os.path.join(d, name), 'run record')
      if isinstance(rec, dict) and rec.get('config_fingerprint') == fp:
        out.append((name[:-len('.json')], rec))
  return out


def job_rows(workdir):
  """One row per job of jobs.json: (job id, kind, run, state, attempt, note)."""
  book = jobs_lib.Book(workdir)
  rows = []
  for e, st in zip(book.jobs, jobs_lib.states(book.jobs)):
    ended_badly = st != 'COMPLETED' and not jobs_lib.is_active(e, st)
    note = jobs_lib.error_line(e) if ended_badly else ''
    rows.append((e['job_id'], e['kind'], e['run'], st, e.get('attempt', 0), note))
  return book, rows


def lines(workdir):
  """The report as lines."""
  fp = fingerprint(workdir)
  book, rows = job_rows(workdir)
  out = []
  if rows:
    out.append(f'Jobs ({book.data.get("launcher", "?")}, {book.path}):')
    width = max(len(r[2]) for r in rows)
    out.append(f'  {"job id":<14} {"kind":<8} {"run":<{width}} {"state":<12} retry  note')
    for job_id, kind, run, st, attempt, note in rows:
      out.append(f'  {job_id:<14} {kind:<8} {run:<{width}} {st:<12} {attempt:<5}  {note}'.rstrip())
  else:
    out.append(f'No jobs in {workdir} (an inline run, or nothing submitted yet).')
  done = finished_runs(workdir, fp)
  facts = book.data.get('facts')
  total = f' of {len(facts["cases"]) * len(facts["seeds"])}' if facts else ''
  out.append(f'Finished runs: {len(done)}{total}')
  for run, rec in done:
    out.append(f'  {rec.get("case")!s:<20} seed {rec.get("seed")!s:<6} {rec.get("status")!s:<9} '
               f'test accuracy {rec.get("test_accuracy")}')
  return out


USAGE = 'python -m tljax.status --workdir=DIR'
ABOUT = ("Lists a sweep's jobs (launcher 'local' or 'slurm') with their states, a failed job's "
         'last error line or its log, and the finished runs with their test accuracy. An inline '
         'run lists its finished runs only. docs/clusters.md explains the states.')
EXAMPLES = ('python -m tljax.status --workdir=artifacts/default',)


def run_cli(argv):
  """The command line; returns the exit status (1 with a one-line error on stderr)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'A tljax workdir (the --workdir of launch.py).',
                      flag_values=fv)
  if cli.asks_help(argv):
    print(cli.help_text(USAGE, ABOUT, fv, EXAMPLES))
    return 0
  try:
    cli.parse_workdir_args(fv, argv, 'the workdir of a tljax run')
    print('\n'.join(lines(fv.workdir)))
  except (flags.Error, ValueError) as e:
    sys.stderr.write(f'tljax: error: {e}\n')
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(run_cli(sys.argv))
