"""The launcher's bookkeeping: jobs.json, the state of each submitit job, per-run files."""

import dataclasses
import json
import os
import time
from typing import Any

from tljax.runtime import report
from tljax.sweep import layout
from tljax.training import case as case_lib

# States of a job that has not ended (SLURM's, and submitit's UNKNOWN for a job sacct does not
# list yet: counted as running for UNKNOWN_GRACE_S after its submission).
ACTIVE = ('PENDING', 'RUNNING', 'REQUEUED', 'COMPLETING', 'CONFIGURING', 'RESIZING', 'SUSPENDED',
          'PREEMPTED', 'READY', 'UNKNOWN')
UNKNOWN_GRACE_S = 600


def read_info(workdir, run, fingerprint):
  """The info a job of this fingerprint wrote for `run`, or None."""
  try:
    with open(layout.job_info_path(workdir, run), encoding='utf-8') as f:
      info = json.load(f)
  except (OSError, ValueError):
    return None
  return info if info.get('fingerprint') == fingerprint else None


@dataclasses.dataclass(frozen=True)
class Task:
  """What one job does: 'pretrain' (its seed: the pretraining's, pretrain.source_seed), 'case'
  (a case at a seed) or 'gather'."""
  kind: str
  seed: Any = None
  case: Any = None  # the case's canonical name (freezing.CaseSpec.name)

  @property
  def run(self):
    if self.kind == 'case':
      return case_lib.run_key(self.case, self.seed)
    return f'pretrain_seed{self.seed}' if self.kind == 'pretrain' else 'gather'


class Book:
  """jobs.json: every job the launcher submitted into a workdir, oldest first, and the facts of
  the sweep (case names, seeds) that tljax.status reports against."""

  def __init__(self, workdir):
    self.path = layout.file_path(workdir, layout.JOBS)
    self.data = {'jobs': []}
    if os.path.exists(self.path):
      try:
        with open(self.path, encoding='utf-8') as f:
          self.data = json.load(f)
        assert isinstance(self.data.get('jobs'), list)
      except (ValueError, AssertionError, AttributeError) as e:
        raise ValueError(f'{self.path} is not a tljax jobs file ({e}); delete it, or pass '
                         '--config.restart=True.') from None

  @property
  def jobs(self):
    return self.data['jobs']

  def add(self, task, job_id, cluster, folder, attempt=0, depends_on=None):
    entry = dict(run=task.run, kind=task.kind, case=task.case, seed=task.seed, job_id=job_id,
                 cluster=cluster, folder=str(folder), attempt=attempt, depends_on=depends_on,
                 submitted_at=time.time())
    self.jobs.append(entry)
    return entry

  def latest(self):
    """{run: its latest job entry}."""
    return {e['run']: e for e in self.jobs}

  def save(self, **fields):
    self.data.update(fields)
    report.write_json(self.path, self.data)


def _pid_alive(pid):
  """Whether `pid` runs a submitit controller (a local job's id is its controller's PID)."""
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return b'submitit' in f.read()
  except OSError:
    try:
      os.kill(pid, 0)
      return True
    except (OSError, ValueError):
      return False


def outcome(entry):
  """('success', result) or ('error', traceback) from submitit's result file, or None."""
  from submitit.core import utils  # pylint: disable=g-import-not-at-top
  path = utils.JobPaths(entry['folder'], entry['job_id']).result_pickle
  if not path.exists():
    return None
  try:
    return utils.pickle_load(path)
  except Exception:  # pylint: disable=broad-except  # a half-written or foreign pickle
    return ('error', f'unreadable result file {path}')


def state(entry, live=None, force='standard'):
  """The job's state: SLURM's (sacct, through submitit's SlurmJob; `force`: submitit's mode,
  'standard' asks sacct at most every few seconds, 'force' now, 'cache' not) or, for a local
  job, RUNNING / COMPLETED / FAILED / INTERRUPTED (ended without a result: stopped or killed).
  `live`: the submitit job object when this process submitted it."""
  out = outcome(entry)
  if out is not None:
    return 'COMPLETED' if out[0] == 'success' else 'FAILED'
  if entry['cluster'] == 'local':
    if live is not None:
      running = live.get_info().get('jobState') == 'RUNNING'
    else:
      running = _pid_alive(int(entry['job_id']))
    return 'RUNNING' if running else 'INTERRUPTED'
  import submitit  # pylint: disable=g-import-not-at-top
  job = live or submitit.SlurmJob(entry['folder'], entry['job_id'])
  mode = 'force' if force == 'force' else 'cache' if force == 'cache' else 'standard'
  return (job.watcher.get_state(entry['job_id'], mode=mode).split() or ['UNKNOWN'])[0]


def states(entries):
  """state() of each entry, with one sacct call for all the SLURM jobs among them."""
  slurm = [e for e in entries if e['cluster'] == 'slurm']
  if slurm:
    import submitit  # pylint: disable=g-import-not-at-top
    watcher = submitit.SlurmJob.watcher
    for e in slurm:
      watcher.register_job(e['job_id'])
    watcher.update()
  return [state(e, force='cache') for e in entries]


def is_active(entry, st):
  if st == 'UNKNOWN':
    return time.time() - entry.get('submitted_at', 0) < UNKNOWN_GRACE_S
  return st.split()[0] in ACTIVE


def error_line(entry):
  """The last line of a failed job's traceback, or where its log is."""
  out = outcome(entry)
  if out is not None and out[0] == 'error':
    lines = [l for l in str(out[1]).strip().splitlines() if l.strip()]
    if lines:
      return lines[-1].strip()
  return (f'ended without a result (stopped, killed or requeued; a rerun resumes it from its '
          f'checkpoint); log: {log_path(entry)}')


def log_path(entry):
  from submitit.core import utils  # pylint: disable=g-import-not-at-top
  return str(utils.JobPaths(entry['folder'], entry['job_id']).stderr)


def ended_without_record(book, runs):
  """[{case, seed, reason}] of `runs` ({run: (case, seed)}: runs without a record) whose latest
  job in `book` has ended (failed, cancelled, killed, timed out): the runs that failed for good
  in a launch whose gather job found them missing."""
  latest = book.latest()
  entries = [latest[r] for r in runs if r in latest]
  out = []
  for e, st in zip(entries, states(entries)):
    if not is_active(e, st) and st != 'COMPLETED':
      case, seed = runs[e['run']]
      out.append(dict(case=case, seed=seed, reason=f"job {e['job_id']} {st}: {error_line(e)}"))
  return out
