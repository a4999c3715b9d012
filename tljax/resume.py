"""Resumable runs: the workdir's config check, in-case checkpoints, finished-case records."""

import hashlib
import json
import os
import shutil

from absl import logging
import jax
import orbax.checkpoint as ocp
import psutil

from tljax import checks
from tljax import report

# Config fields that change no number (checks.FIELDS says which): a workdir may be resumed or
# grown with them changed. They include the sweep's lists `cases` and `seeds` (a run's own case
# and seed are in its fingerprint) and the data folders' paths (their contents are fingerprinted
# instead: a moved copy resumes and a changed folder does not).
SAFE_FIELDS = checks.SAFE_FIELDS
# The tools whose versions are in every fingerprint: an upgrade never mixes old records with new.
TOOLS = ('tljax', 'jax', 'jaxlib', 'flax')
# Fields of one process (or one launch) of a multi-host run, not of the run: fingerprinted and
# compared at these values, so the processes of a run share one fingerprint, a rerun may use
# another coordinator address, and a single-process run's fingerprint is what it always was.
PER_PROCESS = {'process_id': 0, 'coordinator_address': ''}
# What a run writes in its workdir (removed by `restart=True`, never otherwise).
OUTPUTS = ('summary.json', 'results.csv', 'runs.csv', 'metrics.jsonl', 'figure.png',
           'pareto.png', 'config.json', 'data.json', 'jobs.json')
# The launcher's jobs (tljax.launcher) add metrics/, job_info/ and submitit/.
DIRS = ('cases', 'checkpoints', 'metrics', 'job_info', 'submitit')
# Free disk space required before training starts, besides the checkpoints themselves.
MIN_FREE_BYTES = 200 * 2**20


class ConfigChangedError(ValueError):
  """The workdir holds results of a different config."""


def _normalise(d):
  d = json.loads(json.dumps(d, default=list))
  return {**d, **{k: v for k, v in PER_PROCESS.items() if k in d}}


def config_diff(old, new):
  """{field: (old, new)} for the fields that differ, SAFE_FIELDS excluded."""
  old, new = _normalise(old), _normalise(new)
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if k not in SAFE_FIELDS and old.get(k) != new.get(k)}


def not_writable(workdir, e):
  return PermissionError(f'The workdir {workdir} is not writable ({e.strerror}); pass '
                         '--workdir=DIR with a writable folder.')


def versions():
  """{tool: version} of TOOLS, as installed in this process."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import tljax  # pylint: disable=g-import-not-at-top
  return {'tljax': tljax.__version__, 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'flax': flax.__version__}


def _sha256(obj):
  blob = json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def run_fingerprint(config, data_identity=None, case=None, seed=None, tools=None):
  """sha256 of what makes a run's numbers: the canonical JSON of every config field except
  SAFE_FIELDS, `data_identity` (a JSON-able dict describing the data beyond the config, e.g.
  image-folder fingerprints; {} when the config names the data fully), the versions of TOOLS
  (`tools`, default this process's) and, for one (case, seed) run, the case's freeze rules and
  training-mode layers (`case`: a freezing.CaseSpec) and its seed. Without `case` it is the
  sweep's config fingerprint, which every run of the workdir shares."""
  cfg = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  blob = {'config': {k: v for k, v in _normalise(cfg).items() if k not in SAFE_FIELDS},
          'data': _normalise(data_identity or {}), 'tools': tools or versions()}
  if case is not None:
    blob['run'] = _normalise({'case': case.name, 'family': case.family, 'rules': case.rules,
                              'active_layers': case.active_layers, 'seed': int(seed)})
  return _sha256(blob)


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
  path = os.path.join(workdir, 'config.json')
  if config.restart:
    for name in OUTPUTS:
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
    for name in DIRS:
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  elif os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except json.JSONDecodeError as e:
        raise ConfigChangedError(f'{path} is corrupt ({e}); pass --config.restart=True to start '
                                 'over in this workdir.') from e
    diff = config_diff(old, config.to_dict())
    if diff:
      lines = '\n'.join(f'  {k}: {a!r} -> {b!r}' for k, a, b in
                        ((k, *v) for k, v in diff.items()))
      raise ConfigChangedError(
          f'The workdir {workdir} holds a run of a different config:\n{lines}\n'
          'Pass --config.restart=True to delete its results and start over, or --workdir=DIR '
          f'for a new folder. Fields that may change on a resume: {", ".join(SAFE_FIELDS)}.')
  report.write_json(path, config.to_dict())


def _data_diff(old, new):
  """Lines naming what differs between two data identities (train.data_identity)."""
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
  path = os.path.join(workdir, 'data.json')
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    lines = _data_diff(old, _normalise(identity))
    if lines:
      raise ConfigChangedError(
          f'The workdir {workdir} holds a run on other data:\n' + '\n'.join(lines) + '\n'
          'Pass --config.restart=True to delete its results and start over, or --workdir=DIR '
          'for a new folder.')
  report.write_json(path, identity)


def case_dir(workdir, run):
  """The checkpoints of one run (`run`: a (case, seed) key, case.run_key, or a pretraining's)."""
  return os.path.join(workdir, 'checkpoints', str(run))


def done_path(workdir, run):
  return os.path.join(workdir, 'cases', f'{run}.json')


def load_done(workdir, case, fingerprint):
  """The record of a finished run made with `fingerprint` (run_fingerprint), or None.

  A record made by another config, data, case rules or tool versions (or without a
  fingerprint) is never reused: it moves to cases/discarded/ with a log line, and the run
  trains again.
  """
  path = done_path(workdir, case)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      record = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'The finished-run record {path} is corrupt ({e}); delete it to rerun '
                       'that run, or pass --config.restart=True.') from e
  stored = record.pop('fingerprint', None)
  record.pop('config_fingerprint', None)
  if stored == fingerprint:
    return record
  away = os.path.join(workdir, 'cases', 'discarded', f'{case}_{(stored or "none")[:12]}.json')
  os.makedirs(os.path.dirname(away), exist_ok=True)
  os.replace(path, away)
  logging.warning('Run %s: its record was made by another config, data or version (fingerprint '
                  '%s, this run %s): not reused, moved to %s; the run trains again.', case,
                  (stored or 'none')[:12], fingerprint[:12], away)
  return None


def save_done(workdir, case, record, fingerprint, config_fingerprint=None):
  """Writes a finished run's record with the fingerprint of the run that made it (and its
  sweep's config fingerprint, which tljax.status matches), then drops its checkpoints."""
  report.write_json(done_path(workdir, case), dict(record, fingerprint=fingerprint,
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


class Checkpoints:
  """The latest train state of one case (orbax, atomic: a step dir is complete or absent).

  Saves are asynchronous in a single process: `save` returns once the arrays are copied to host
  memory (so the next step may donate them) and orbax writes them in a background thread; the
  next save, `restore`, `wait` and `close` wait for it. With several processes (jax.distributed)
  every process creates, saves, restores and closes it collectively, in the same order, and
  each save completes before `save` returns: orbax's multi-host mode (primary host 0 writes the
  metadata and finalises the step, each array shard is written once, barriers in between).
  """

  def __init__(self, directory, asynchronous=None):
    self.directory = os.path.abspath(directory)
    self.asynchronous = jax.process_count() == 1 if asynchronous is None else asynchronous
    self._mngr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=self.asynchronous))

  def latest_step(self):
    return self._mngr.latest_step()

  def save(self, state, meta):
    tree = _to_tree(state)
    self._mngr.save(int(meta['step']), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    if not self.asynchronous:
      self.wait()

  def wait(self):
    """Blocks until the last save is on disk."""
    self._mngr.wait_until_finished()

  def restore(self, like_state):
    """(state, meta) of the latest checkpoint, in the structure of `like_state`."""
    self.wait()
    step = self.latest_step()
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          _to_tree(like_state))  # placed like `like_state` (e.g. replicated)
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      raise ValueError(f'The checkpoint {self.directory}/{step} cannot be read ({e}); delete '
                       f'{self.directory} to rerun this case from its start, or pass '
                       '--config.restart=True.') from e
    return _from_tree(like_state, out.state), dict(out.meta)

  def close(self):
    """Waits for the last save, then releases orbax's threads."""
    self._mngr.close()


def _to_tree(state):
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'rng': jax.random.key_data(state.rng)}


def _from_tree(like_state, tree):
  return like_state.replace(step=tree['step'], params=tree['params'],
                            batch_stats=tree['batch_stats'], opt_state=tree['opt_state'],
                            rng=jax.random.wrap_key_data(tree['rng']))


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


def available_memory_bytes():
  """Memory the step may use: the device's free memory, or the host's available RAM on CPU."""
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return int(psutil.virtual_memory().available)
