"""Resumable runs: the workdir's config check, in-case checkpoints, finished-case records."""

import hashlib
import json
import os
import shutil

from absl import logging
import jax
import orbax.checkpoint as ocp
import psutil

from tljax import report

# Config fields that change no number in the summary: a workdir may be resumed with them changed.
# The data folders' paths are among them because their contents are checked instead
# (check_data: a fingerprint of every file), so a moved copy resumes and a changed folder does not.
# The budget fields only choose the recommendation, which every run recomputes from the records.
SAFE_FIELDS = ('progress', 'cache_dir', 'data_dir', 'source_data_dir', 'target_data_dir',
               'data_memory_mb', 'restart', 'checkpoint_every_steps', 'max_energy_per_example_j',
               'max_train_memory_mb', 'min_accuracy', 'budget_memory', 'launcher',
               'max_parallel_jobs', 'slurm_partition', 'slurm_gpus_per_job', 'slurm_time_minutes',
               'slurm_extra', 'launcher_wait', 'job_retries', 'compilation_cache',
               'compilation_cache_dir')
# Fields of one process (or one launch) of a multi-host run, not of the run: fingerprinted and
# compared at these values, so the processes of a run share one fingerprint, a rerun may use
# another coordinator address, and a single-process run's fingerprint is what it always was.
PER_PROCESS = {'process_id': 0, 'coordinator_address': ''}
# Fields added to configs/base.py after runs were made, at the value every earlier run had: left
# out of the fingerprint and the comparison at that value, so an earlier workdir resumes.
ADDED_FIELDS = {'alpha': 1.0, 'minimalistic': False}
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
  d = {k: v for k, v in d.items() if k not in ADDED_FIELDS or v != ADDED_FIELDS[k]}
  return {**d, **{k: v for k, v in PER_PROCESS.items() if k in d}}


def config_diff(old, new):
  """{field: (old, new)} for the fields that differ, SAFE_FIELDS excluded."""
  old, new = _normalise(old), _normalise(new)
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if k not in SAFE_FIELDS and old.get(k) != new.get(k)}


def not_writable(workdir, e):
  return PermissionError(f'The workdir {workdir} is not writable ({e.strerror}); pass '
                         '--workdir=DIR with a writable folder.')


def run_fingerprint(config, data_identity=None):
  """sha256 of what makes a run's numbers: the canonical JSON of every config field except
  SAFE_FIELDS, and `data_identity` (a JSON-able dict describing the data beyond the config,
  e.g. image-folder fingerprints; {} when the config names the data fully)."""
  cfg = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  blob = json.dumps({'config': {k: v for k, v in _normalise(cfg).items() if k not in SAFE_FIELDS},
                     'data': _normalise(data_identity or {})},
                    sort_keys=True, separators=(',', ':'), ensure_ascii=True)
  return hashlib.sha256(blob.encode()).hexdigest()


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
  """The record of a finished case made with `fingerprint` (run_fingerprint), or None.

  A record made by another config or data (or without a fingerprint) is never reused: it moves
  to cases/discarded/ with a log line, and the case trains again.
  """
  path = done_path(workdir, case)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      record = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'The finished-case record {path} is corrupt ({e}); delete it to rerun '
                       'that case, or pass --config.restart=True.') from e
  stored = record.pop('fingerprint', None)
  if stored == fingerprint:
    return record
  away = os.path.join(workdir, 'cases', 'discarded', f'{case}_{(stored or "none")[:12]}.json')
  os.makedirs(os.path.dirname(away), exist_ok=True)
  os.replace(path, away)
  logging.warning('Case %s: its record was made by another config or data (fingerprint %s, this '
                  'run %s): not reused, moved to %s; the case trains again.', case,
                  (stored or 'none')[:12], fingerprint[:12], away)
  return None


def save_done(workdir, case, record, fingerprint):
  """Writes a finished case's record with the fingerprint of the run that made it."""
  report.write_json(done_path(workdir, case), dict(record, fingerprint=fingerprint))
  shutil.rmtree(case_dir(workdir, case), ignore_errors=True)


def discard_stale_checkpoints(workdir, fingerprint):
  """Removes in-case checkpoints that a run of another config or data left (they carry its
  fingerprint in checkpoints/fingerprint.json); the rest are marked as this run's."""
  root = os.path.join(workdir, 'checkpoints')
  mark = os.path.join(root, 'fingerprint.json')
  if os.path.isdir(root) and set(os.listdir(root)) - {'fingerprint.json'}:
    try:
      with open(mark) as f:
        stored = json.load(f).get('fingerprint')
    except (OSError, ValueError, AttributeError):
      stored = None
    if stored != fingerprint:
      logging.warning('The checkpoints in %s were made by another config or data (fingerprint '
                      '%s, this run %s): deleted; their cases start from step 0.', root,
                      (stored or 'none')[:12], fingerprint[:12])
      shutil.rmtree(root)
  os.makedirs(root, exist_ok=True)
  report.write_json(mark, {'fingerprint': fingerprint})


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


def filter_metrics(path, keep_runs, resume_steps):
  """Rewrites metrics.jsonl keeping the lines of `keep_runs` (finished) and those of the runs
  in `resume_steps` up to their checkpoint's step; lines written after a checkpoint (or by a
  run that left none) are dropped, since the resumed run writes them again. A line's run is
  its 'run' field (case.run_key)."""
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
      if run in keep_runs or (run in resume_steps and rec.get('step', 0) <= resume_steps[run]):
        keep.append(line if line.endswith('\n') else line + '\n')
  report.atomic_write_bytes(path, ''.join(keep).encode())


def available_memory_bytes():
  """Memory the step may use: the device's free memory, or the host's available RAM on CPU."""
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return int(psutil.virtual_memory().available)
