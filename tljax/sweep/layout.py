"""The workdir's layout and what lives in it: every path, the config and data checks, run records,
checkpoint claims and the metrics file's resumable filtering."""

import json
import os
import shutil

from absl import logging

from tljax.runtime import report
from tljax.sweep import fingerprints

# The workdir's files, by what they hold (docs/outputs.md describes each).
CONFIG, DATA, SUMMARY = 'config.json', 'data.json', 'summary.json'
RESULTS, RUNS, METRICS = 'results.csv', 'runs.csv', 'metrics.jsonl'
FIGURE, PARETO, JOBS = 'figure.png', 'pareto.png', 'jobs.json'
PROXIES = 'proxies.json'  # the selection proxies' leaderboard (tljax.proxies)
LOCK = '.tljax.lock'  # the sweep's lock (tljax.sweep.locks); never removed
SEARCH = 'search.json'  # a search's rung results and proxy choice (tljax.sweep.search)
# What a run writes in its workdir (removed by `restart=True`, never otherwise).
OUTPUTS = (SUMMARY, RESULTS, RUNS, METRICS, FIGURE, PARETO, CONFIG, DATA, JOBS, PROXIES, SEARCH)
# Its folders: run records, checkpoints, the proxies' scores per case; the launcher's jobs
# (tljax.cluster) add per-run metrics and info files (with the runs' locks) and submitit's logs.
RECORDS, CHECKPOINTS, PROXY_SCORES, JOB_METRICS, JOB_INFO, SUBMITIT = (
    'cases', 'checkpoints', 'proxies', 'metrics', 'job_info', 'submitit')
DIRS = (RECORDS, CHECKPOINTS, PROXY_SCORES, JOB_METRICS, JOB_INFO, SUBMITIT)
# Free disk space required before training starts, besides the checkpoints themselves.
MIN_FREE_BYTES = 200 * 2**20


class ConfigChangedError(ValueError):
  """The workdir holds results of a different config."""


def file_path(workdir, name):
  """The workdir's file `name` (one of the names above)."""
  return os.path.join(workdir, name)


def record_path(workdir, run):
  """The record of a finished (case, seed) run (case.run_key)."""
  return os.path.join(workdir, RECORDS, f'{run}.json')


def discarded_path(workdir, run, fingerprint):
  """Where a record of another fingerprint is kept aside, never reused."""
  return os.path.join(workdir, RECORDS, 'discarded', f'{run}_{(fingerprint or "none")[:12]}.json')


def proxy_path(workdir, run):
  """The proxies' scores of one (case, seed) run's case, computed before it trained, with the
  key they were computed under (tljax.proxies.store)."""
  return os.path.join(workdir, PROXY_SCORES, f'{run}.json')


def case_dir(workdir, run):
  """The checkpoints of one run (`run`: a (case, seed) key, case.run_key, or a pretraining's)."""
  return os.path.join(workdir, CHECKPOINTS, str(run))


def prefix_cache_dir(workdir, run):
  """The frozen-prefix features of one run while it trains (removed after it)."""
  return os.path.join(workdir, f'cache_{run}')


def job_metrics_path(workdir, run):
  """A job's own metrics lines (the gather concatenates them into metrics.jsonl)."""
  return os.path.join(workdir, JOB_METRICS, f'{run}.jsonl')


def job_info_path(workdir, run):
  """What a job reports beside the record: its environment, compile time, pretraining."""
  return os.path.join(workdir, JOB_INFO, f'{run}.json')


def run_lock_path(workdir, run):
  """The lock of one run, held by whichever process trains it (tljax.sweep.locks)."""
  return os.path.join(workdir, JOB_INFO, f'{run}.lock')


def submitit_dir(workdir, stamp):
  """submitit's folder of one launch (its jobs' logs and pickles; '%j' is the job id)."""
  return os.path.join(os.path.abspath(workdir), SUBMITIT, stamp, '%j')


def read_output(workdir, name, missing, what):
  """The JSON output `name` of a finished `workdir` (a command line's --workdir); ValueError in
  one line: no such directory, `missing` when the file is not there, `what` names it when it
  cannot be read."""
  path = file_path(workdir, name)
  if not os.path.isdir(workdir):
    raise ValueError(f'--workdir={workdir}: no such directory')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise ValueError(missing) from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path} is not a readable {what}: {e}') from None


def not_writable(workdir, e):
  return PermissionError(f'The workdir {workdir} is not writable ({e.strerror}); pass '
                         '--workdir=DIR with a writable folder.')


def prepare_workdir(workdir, config):
  """Checks the workdir before any work: writable, enough disk, and the same config as before.

  restart=True removes the outputs of an earlier run first (only tljax's own files).
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.tljax_write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise not_writable(workdir, e) from e
  free = shutil.disk_usage(workdir).free
  if free < MIN_FREE_BYTES:
    raise OSError(f'Only {free / 2**20:.0f} MiB free on the disk of {workdir}; tljax needs at '
                  f'least {MIN_FREE_BYTES / 2**20:.0f} MiB for checkpoints and results.')
  cfg_path = file_path(workdir, CONFIG)
  if config.restart:
    for name in OUTPUTS:
      if os.path.exists(file_path(workdir, name)):
        os.remove(file_path(workdir, name))
    for name in DIRS:
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  elif os.path.exists(cfg_path):
    old = _load_json(cfg_path, ConfigChangedError,
                     'pass --config.restart=True to start over in this workdir.')
    diff = fingerprints.config_diff(old, config.to_dict())
    if diff:
      lines = '\n'.join(f'  {k}: {a!r} -> {b!r}' for k, a, b in
                        ((k, *v) for k, v in diff.items()))
      raise ConfigChangedError(
          f'The workdir {workdir} holds a run of a different config:\n{lines}\n'
          'Pass --config.restart=True to delete its results and start over, or --workdir=DIR '
          'for a new folder. Fields that may change on a resume: '
          f'{", ".join(fingerprints.SAFE_FIELDS)}.' + _hint(diff))
  report.write_json(cfg_path, config.to_dict())


def _hint(diff):
  """What resumes a workdir made before a field existed, for the fields that need one."""
  if diff.get('pretrain_seed', (0,))[0] == -1:
    return ('\nIts runs started each seed from its own pretraining (pretrain_seed=-1, as every run '
            'made before the field existed): --config.pretrain_seed=-1 goes on in this workdir '
            'with that setting.')
  return ''


def _load_json(json_path, error, what_to_do):
  """The JSON file at `json_path`; `error` naming it and `what_to_do` when it is corrupt."""
  with open(json_path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise error(f'{json_path} is corrupt ({e}); {what_to_do}') from e


def _data_diff(old, new):
  """Lines naming what differs between two data identities (inputs.data_identity)."""
  lines = []
  for role in sorted(set(old) | set(new)):
    a, b = old.get(role, {}), new.get(role, {})
    field = f'{role}_data_dir' if 'train' in a or 'train' in b else f'{role}_dataset'
    for key in sorted(set(a) | set(b)):
      if key != 'root' and a.get(key) != b.get(key):
        lines.append(f'  {field} ({b.get("root") or b.get("dataset")}): {key} '
                     f'{a.get(key)!r} -> {b.get(key)!r}')
  return lines


def check_data(workdir, identity):
  """Refuses a workdir whose earlier run used other data (another folder, or changed files)."""
  data_path = file_path(workdir, DATA)
  if os.path.exists(data_path):
    with open(data_path) as f:
      old = json.load(f)
    lines = _data_diff(old, fingerprints.normalise(identity))
    if lines:
      raise ConfigChangedError(
          f'The workdir {workdir} holds a run on other data:\n' + '\n'.join(lines) + '\n'
          'Pass --config.restart=True to delete its results and start over, or --workdir=DIR '
          'for a new folder.')
  report.write_json(data_path, identity)


def load_done(workdir, case, fingerprint):
  """The record of a finished run made with `fingerprint` (run_fingerprint), or None.

  A record made by another config, data, case rules or tool versions (or without a
  fingerprint) is never reused: it moves to cases/discarded/ with a log line, and the run
  trains again.
  """
  rec_path = record_path(workdir, case)
  if not os.path.exists(rec_path):
    return None
  record = _load_json(rec_path, ValueError, 'delete this finished-run record to rerun that run, '
                      'or pass --config.restart=True.')
  stored = record.pop('fingerprint', None)
  record.pop('config_fingerprint', None)
  if stored == fingerprint:
    return record
  away = discarded_path(workdir, case, stored)
  os.makedirs(os.path.dirname(away), exist_ok=True)
  os.replace(rec_path, away)
  logging.warning('Run %s: its record was made by another config, data or version (fingerprint '
                  '%s, this run %s): not reused, moved to %s; the run trains again.', case,
                  (stored or 'none')[:12], fingerprint[:12], away)
  return None


def save_done(workdir, case, record, fingerprint, config_fingerprint=None):
  """Writes a finished run's record with the fingerprint of the run that made it (and its
  sweep's config fingerprint, which tljax.status matches), then drops its checkpoints."""
  report.write_json(record_path(workdir, case), dict(record, fingerprint=fingerprint,
                                                   config_fingerprint=config_fingerprint))
  shutil.rmtree(case_dir(workdir, case), ignore_errors=True)
  _remove(case_dir(workdir, case) + '.fingerprint')


def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def claim_checkpoints(workdir, run, fingerprint):
  """Deletes the checkpoints of `run` that a run of another fingerprint left (another config,
  data, case rules or tool versions: <run>.fingerprint beside them says whose they are), then
  marks them as this fingerprint's. Call it with the run's lock held, before it resumes."""
  d = case_dir(workdir, run)
  mark = d + '.fingerprint'
  try:
    with open(mark, encoding='utf-8') as f:
      stored = f.read().strip()
  except OSError:
    stored = None
  if os.path.isdir(d) and stored != fingerprint:
    logging.warning('The checkpoints of run %s were made by another config, data or version '
                    '(fingerprint %s, this run %s): deleted; it starts from step 0.', run,
                    (stored or 'none')[:12], fingerprint[:12])
    shutil.rmtree(d)
  if stored != fingerprint:
    report.atomic_write_bytes(mark, fingerprint.encode())


def filter_metrics(path, redo_runs, resume_steps):
  """Rewrites metrics.jsonl without the lines that will be written again: those of `redo_runs`
  (planned runs that have not finished) after their checkpoint's step (`resume_steps`: {run:
  step}; a run without a checkpoint loses all its lines). Lines of finished runs, and of runs
  this sweep does not plan (a case removed from the config), are kept. A line's run is its
  'run' field (case.run_key)."""
  if not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:  # a line cut by the kill
        continue
      run = rec.get('run')
      if run not in redo_runs or rec.get('step', 0) <= resume_steps.get(run, -1):
        keep.append(line if line.endswith('\n') else line + '\n')
  report.atomic_write_bytes(path, ''.join(keep).encode())


