"""The loop of one training run: compiled steps over epochs, checkpoints, logs; and evaluation."""

import dataclasses
import itertools
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from tljax.data import datasets
from tljax.runtime import parallel
from tljax.training import compiled


@dataclasses.dataclass
class _Progress:
  """Where a run stands: steps done, seconds trained before this process, metrics not logged."""
  steps: int = 0
  wall_before: float = 0.0
  pending: list = dataclasses.field(default_factory=list)
  last_ckpt: int = 0
  t0: float = 0.0
  t_log: float = 0.0
  steps_log: int = 0
  diverged_at: Any = None
  probed: Any = None  # the Probe's result once measured (kept in checkpoints)

  def wall(self):
    return self.wall_before + time.perf_counter() - self.t0


def steps_per_epoch(config, arrays):
  """Train steps per epoch: whole batches, at most config.steps_per_epoch when it is set."""
  n = len(arrays) // config.batch_size
  if n == 0:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the '
                     f'{len(arrays)} training examples of {arrays.name!r}.')
  return min(n, config.steps_per_epoch) if config.steps_per_epoch else n


def fraction_step(total, fraction):
  """The step at `fraction` of a run's `total` steps: rounded, at least 1, at most `total`
  (the short-training measurement and halving's rungs, docs/search.md "Halving")."""
  return min(total, max(1, int(round(fraction * total))))


@dataclasses.dataclass
class Probe:
  """A measurement inside a run: fn(state) -> {name: value} once, at `step`. Its seconds are
  left out of the run's wall time; its result, with `<prefix>train_s` (the run's training wall
  to that step plus the measurement's), is kept in the run's checkpoints."""
  step: int
  fn: Any
  prefix: str = 'short_'


@dataclasses.dataclass
class Loop:
  """What one training loop runs besides its state.

  train_c: the compiled train step; arrays: the train split (datasets.Arrays, or cached prefix
  features); prep: the batch preprocessing; desc: the progress bar's label; metrics: a
  report.MetricsWriter; tags: {'case', 'seed', 'run'}, labelling its lines; mesh: the
  parallel.Mesh batches are sharded over; ckpt: the run's checkpoints.Checkpoints or None;
  stop_at: a step below the run's last at which it pauses (a checkpoint, pending metrics
  included, then fit returns): a rung of a search; probe: a Probe or None; probed: set by fit,
  the probe's result (None until measured).
  """
  train_c: Any
  arrays: Any
  config: Any
  prep: Any
  epochs: int
  desc: str
  metrics: Any
  tags: dict
  mesh: Any
  ckpt: Any = None
  stop_at: Any = None
  probe: Any = None
  probed: Any = None


def fit(state, loop):
  """Runs `loop.train_c` over `loop.epochs` epochs, from the latest checkpoint in `loop.ckpt`
  if any.

  Checkpoints (every config.checkpoint_every_steps, at logging steps so no metric is pending)
  hold the whole train state; the data position follows from its step, since batches depend
  only on (seed, epoch, index). With several processes every one of them runs this loop in
  step (checkpoints are saved and restored collectively).
  Returns (state, steps, wall_s, diverged_at): steps below the run's last when it paused at
  loop.stop_at (or diverged).
  """
  train_c, arrays, config, prep, epochs = (loop.train_c, loop.arrays, loop.config, loop.prep,
                                           loop.epochs)
  desc, mesh, ckpt = loop.desc, loop.mesh, loop.ckpt
  per_epoch = steps_per_epoch(config, arrays)
  total = epochs * per_epoch
  state, p = _restore(state, ckpt, mesh, desc, total)
  bar = tqdm.tqdm(total=total, initial=p.steps, desc=desc, unit='step',
                  disable=not config.progress, dynamic_ncols=True)
  p.t0 = p.t_log = time.perf_counter()
  p.steps_log = p.steps
  for epoch in range(p.steps // per_epoch, epochs):
    start = p.steps - epoch * per_epoch
    # No batch past the epoch's steps is read: a prefix cache holds only the examples visited.
    batches = itertools.islice(datasets.train_batches(
        arrays, config.batch_size, seed=compiled.seed_of(config), epoch=epoch, start_step=start,
        prep=prep), per_epoch - start)
    for images, labels in datasets.prefetch(batches):
      if p.steps >= (epoch + 1) * per_epoch:
        break
      if parallel.stop_requested():  # SIGINT/SIGTERM (any process): checkpoint this step
        bar.close()
        _stop(state, p, ckpt, epoch, f'{desc}, step {p.steps} of {total}')
      state, m = train_c(state, mesh.put_batch(images), mesh.put_batch(labels))
      p.pending.append(m)
      p.steps += 1
      bar.update(1)
      if _after_step(state, p, loop, epoch, total, bar):
        return _finish(state, p, loop, bar)
  return _finish(state, p, loop, bar)


def _finish(state, p, loop, bar):
  jax.block_until_ready(state)
  bar.close()
  loop.probed = p.probed
  return state, p.steps, p.wall(), p.diverged_at


def _after_step(state, p, loop, epoch, total, bar):
  """The probe, the log line and a checkpoint after step p.steps; True when the run stops here
  (its loss was not finite, or it pauses at loop.stop_at, checkpointed with the metrics not yet
  logged, as a stop by a signal: the next part logs the same lines as one run would)."""
  config, ckpt = loop.config, loop.ckpt
  if loop.probe is not None and p.steps == loop.probe.step and p.probed is None:
    _probe(state, p, loop.probe)
  if p.steps % config.log_every_steps == 0 or p.steps == total:
    if _log(p, config, loop.metrics, loop.tags, epoch, bar, loop.desc):
      return True
    if (ckpt is not None and config.checkpoint_every_steps and p.steps < total
        and p.steps - p.last_ckpt >= config.checkpoint_every_steps):
      _save(ckpt, state, p, epoch)
  if loop.stop_at is not None and p.steps == loop.stop_at < total:
    if ckpt is not None and p.steps > p.last_ckpt:
      _save(ckpt, state, p, epoch, keep=True)  # the next part goes on from memory
    return True
  return False


def _probe(state, p, probe):
  """Runs `probe` on `state`; its seconds are left out of the run's wall time."""
  jax.block_until_ready(state)
  t = time.perf_counter()
  out = dict(probe.fn(state))
  spent = time.perf_counter() - t
  p.t0 += spent
  p.t_log += spent
  out[probe.prefix + 'train_s'] = p.wall() + spent
  p.probed = out


def _save(ckpt, state, p, epoch, keep=False):
  """Checkpoints `state` at step p.steps with its metrics not yet logged and its probe's
  result (`keep`: Checkpoints.save's)."""
  ckpt.save(state, {'step': p.steps, 'epoch': epoch, 'pending': _pack_pending(p.pending),
                    'wall_s': p.wall(), 'probed': p.probed}, keep=keep)
  p.last_ckpt = p.steps


def _restore(state, ckpt, mesh, desc, total):
  """(state, progress) from the latest checkpoint of `ckpt`, or the fresh ones."""
  p = _Progress()
  if ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    state = mesh.put_replicated(state)
    p.steps, p.wall_before = int(meta['step']), float(meta['wall_s'])
    p.pending = _unpack_pending(meta.get('pending'))
    p.probed = meta.get('probed')
    logging.info('%s: resuming from the checkpoint at step %d of %d', desc, p.steps, total)
  p.last_ckpt = p.steps
  return state, p


def _stop(state, p, ckpt, epoch, where):
  """Checkpoints the state (with its pending metrics) and raises interrupt.Interrupted."""
  if ckpt is not None and p.steps > p.last_ckpt:
    _save(ckpt, state, p, epoch)
    ckpt.wait()  # on disk before the stop is reported
  parallel.check_interrupt(where + (f', checkpoint saved in {ckpt.directory}'
                                    if ckpt is not None and p.steps else ''))


def _log(p, config, metrics, tags, epoch, bar, desc):
  """Writes the metrics line of the pending steps; True when a loss was not finite."""
  vals = jax.device_get(p.pending)
  p.pending = []
  loss = float(np.mean([v['loss'] for v in vals]))
  acc = float(np.mean([v['accuracy'] for v in vals]))
  now = time.perf_counter()
  rate = (p.steps - p.steps_log) * config.batch_size / max(now - p.t_log, 1e-9)
  p.t_log, p.steps_log = now, p.steps
  metrics.write(**tags, step=p.steps, epoch=epoch, train_loss=loss, train_accuracy=acc,
                examples_per_s=rate)
  bar.set_postfix(loss=f'{loss:.4f}', ex_per_s=f'{rate:.0f}')
  bad = [j for j, v in enumerate(vals) if not np.isfinite(v['loss'])]
  if bad:
    p.diverged_at = p.steps - len(vals) + bad[0] + 1
    logging.warning('%s: loss is not finite at step %d; stopping this run.', desc, p.diverged_at)
  return bool(bad)


def _pack_pending(pending):
  """Metrics of the steps since the last log line, as JSON for a checkpoint's metadata."""
  vals = jax.device_get(pending)
  return [{k: [float(v), np.asarray(v).dtype.name] for k, v in m.items()} for m in vals]


def _unpack_pending(packed):
  """The inverse of _pack_pending, with the same dtypes (so the next log line's means match)."""
  return [{k: np.asarray(v, dtype) for k, (v, dtype) in m.items()} for m in packed or []]


def evaluate(eval_c, state, arrays, config, prep, mesh, batch=None):
  """(accuracy, mean loss) of `state` over every example of `arrays`, batches over `mesh` of
  `batch` examples (default eval_batch(config, arrays, mesh): what `eval_c` was compiled for;
  another split evaluated with the same step passes its batch)."""
  sums = None
  put = mesh.put_batch
  batch = eval_batch(config, arrays, mesh) if batch is None else batch
  for images, labels, mask in datasets.prefetch(
      datasets.eval_batches(arrays, batch, prep=prep)):
    out = eval_c(state.params, state.batch_stats, put(images), put(labels), put(mask))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return float(sums['correct'] / sums['count']), float(sums['loss'] / sums['count'])


def eval_batch(config, arrays, mesh):
  """The eval batch: at most the split's size, rounded up to a multiple of the mesh's devices."""
  b = min(config.eval_batch_size, len(arrays))
  return -(-b // mesh.num_devices) * mesh.num_devices
