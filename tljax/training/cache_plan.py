"""The frozen-prefix cache's cost model: per run, whether to cache, at which cut, which examples.

Caching moves the prefix's forward pass from every example pass of training to one pass per
example the run visits (the fill), and pays for that with bytes: the fill writes each
example's activations once, and every step reads them back instead of the (smaller) input.
Per example pass (docs/cases.md "The frozen-prefix cache"):

  saved  = passes   x (F / flops_per_s + input_bytes / read_bytes_per_s)
  cost   = examples x (F / flops_per_s + input_bytes / read_bytes_per_s
                       + feature_bytes / write_bytes_per_s)
           + passes x feature_bytes / read_bytes_per_s

with F the prefix's forward FLOPs per example, `passes` = steps x batch and `examples` the
distinct train examples those steps visit. A run caches where saved - cost >= MIN_GAIN_S. An
example visited once saves nothing (its prefix runs once either way), so the test split, which
is evaluated once, is never cached, and a run shorter than an epoch never caches.
"""

import dataclasses
import math
import os
import shutil
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tljax.accounting import costs
from tljax.models.base import LAYER_OUTPUTS, OUTPUT_SUFFIX
from tljax.training import compiled as compiled_lib
from tljax.training import fit
from tljax.training import prefix_cache


@dataclasses.dataclass(frozen=True)
class Rates:
  """What the cost model assumes one process does per second."""
  flops_per_s: float  # the prefix's forward pass
  read_bytes_per_s: float  # gathering a batch's rows (cached activations or input images)
  write_bytes_per_s: float  # filling the cache: fresh pages, in RAM or a memory map


# CPU: measured on the 2-core AMD EPYC this project is developed on (load ~4, 2026-12-05): the
# small CNN's prefixes at batch 64 ran at 38-42 GFLOP/s (conv-bound cuts; the first conv alone,
# memory-bound, at 3.3), numpy gathered 64 sorted random rows at 0.7-10 GB/s (512 B to 128 KiB
# rows) and wrote fresh pages at 0.07-0.38 GB/s. GPU and TPU: stated assumptions, not
# measured: cached rows travel host to device (PCIe-class 10 GB/s) where the input did, and a
# small model's prefix runs far below the chip's peak.
RATES = {
    'cpu': Rates(flops_per_s=40e9, read_bytes_per_s=2e9, write_bytes_per_s=0.2e9),
    'gpu': Rates(flops_per_s=20e12, read_bytes_per_s=10e9, write_bytes_per_s=1e9),
    'tpu': Rates(flops_per_s=50e12, read_bytes_per_s=10e9, write_bytes_per_s=1e9),
}
# The least estimated saving (s per run) worth caching for: it pays compiling the prefix and
# suffix steps (about a second for the small CNN on CPU) and the fill's fixed costs.
MIN_GAIN_S = 1.0


def rates(platform=None):
  """The Rates of `platform` (default: JAX's backend)."""
  return RATES.get(platform or jax.default_backend(), RATES['gpu'])


@dataclasses.dataclass(frozen=True)
class Cut:
  """One place a case's prefix could end: layers [0, index) run once per example."""
  index: int
  layer: str  # the first layer of the suffix
  flops_per_example: float  # the prefix's forward pass
  feature_bytes: int  # its output per example, float32


@dataclasses.dataclass(frozen=True)
class Usage:
  """What a run reads of its train split."""
  examples: int  # distinct train examples its batches visit: what a cache fills
  passes: int  # example passes: steps x batch
  split_examples: int  # the train split's size
  input_bytes: int  # one stored example (uint8 H x W x C, or float32)


@dataclasses.dataclass(frozen=True)
class Decision:
  """Whether a run trains on cached prefix activations, where, and why."""
  cache: bool
  reason: str
  cut: Optional[Cut] = None  # the cut chosen, or the best one rejected (None: no cut)
  usage: Optional[Usage] = None
  saved_s: float = 0.0  # estimates at `rates`
  cost_s: float = 0.0
  location: Optional[str] = None  # 'memory' or 'disk' (where the cache goes or would go)
  rates: Optional[Rates] = None

  @property
  def nbytes(self):
    return self.usage.examples * self.cut.feature_bytes if self.cut and self.usage else 0

  def record(self):
    """The record's `prefix_cache_decision` (docs/outputs.md)."""
    u, k = self.usage, self.cut
    return dict(
        decision='cache' if self.cache else 'none', reason=self.reason,
        cut_layer=k and k.layer, prefix_flops_per_example=k and k.flops_per_example,
        feature_bytes_per_example=k and k.feature_bytes,
        train_examples=u and u.split_examples, examples_visited=u and u.examples,
        example_passes=u and u.passes, bytes=self.nbytes, location=self.location,
        saved_flops=(u.passes - u.examples) * k.flops_per_example if u and k else 0.0,
        saved_s=self.saved_s, cost_s=self.cost_s, gain_s=self.saved_s - self.cost_s,
        rates=self.rates and dataclasses.asdict(self.rates))

  def line(self):
    """The decision in a few words, for the run's log line."""
    if not self.cache:
      return f'none: {self.reason}'
    u = self.usage
    return (f'cache below {self.cut.layer}, {u.examples:,} of {u.split_examples:,} train '
            f'examples x {self.cut.feature_bytes:,} B = {self.nbytes / 2**20:.1f} MiB in '
            f'{self.location}: {self.reason}')


def visited(n, batch, seed, epochs, per_epoch, start_step=0):
  """(sorted distinct example indices, example passes) of the train batches of steps
  [start_step, epochs x per_epoch): datasets.train_batches's order, which depends only on
  (seed, epoch). Memory: one bool per example, whatever the epochs."""
  seen, passes = np.zeros(n, bool), 0
  for epoch in range(start_step // per_epoch, epochs):
    lo = max(start_step - epoch * per_epoch, 0)
    passes += (per_epoch - lo) * batch
    if not seen.all():
      seen[np.random.default_rng([seed, epoch]).permutation(n)[lo * batch:per_epoch * batch]] = True
  return np.flatnonzero(seen), passes


@dataclasses.dataclass(frozen=True)
class Visits:
  """The train examples a run's steps visit, as the rows of its prefix cache: in the order the
  steps first visit them (a batch's sorted, as datasets.train_batches reads it), filled in chunks
  of `batch` rows. Whatever part of the run fills a chunk, the chunk holds the same examples in
  the same places, so its features are the same (XLA:CPU may round an example differently by
  its place in a batch): a search's rung fills only the chunks its steps read, and the run's
  next part the others (docs/search.md "A rung's prefix cache")."""
  order: np.ndarray  # example indices by first visit
  new_by: np.ndarray  # new_by[s]: the distinct examples steps [0, s) visit
  row_of: np.ndarray  # row_of[example]: its row in `order`, -1 if no step visits it
  batch: int
  seed: int
  per_epoch: int

  @classmethod
  def of(cls, n, batch, seed, epochs, per_epoch):
    """The Visits of steps [0, epochs x per_epoch) over a split of `n` examples."""
    seen, order, new_by = np.zeros(n, bool), [], [np.zeros(1, np.int64)]
    for epoch in range(epochs):
      steps = _epoch_batches(n, batch, seed, epoch, per_epoch)
      fresh = ~seen[steps]  # an example appears once per epoch
      seen[steps] = True
      order.append(steps[fresh])
      new_by.append(new_by[-1][-1] + np.cumsum(fresh.sum(axis=1)))
    order = np.concatenate(order) if order else np.zeros(0, np.int64)
    row_of = np.full(n, -1, np.int64)
    row_of[order] = np.arange(len(order))
    return cls(order, np.concatenate(new_by), row_of, batch, seed, per_epoch)

  @property
  def chunks_total(self):
    return -(-len(self.order) // self.batch)

  def chunks(self, start, stop):
    """The fill chunks the batches of steps [start, stop) read, sorted."""
    if start == 0:
      return np.arange(-(-int(self.new_by[stop]) // self.batch))
    need = np.zeros(self.chunks_total, bool)
    for epoch in range(start // self.per_epoch, -(-stop // self.per_epoch)):
      lo, hi = max(start - epoch * self.per_epoch, 0), min(stop - epoch * self.per_epoch,
                                                          self.per_epoch)
      steps = _epoch_batches(len(self.row_of), self.batch, self.seed, epoch, self.per_epoch)
      need[self.row_of[steps[lo:hi]] // self.batch] = True
    return np.flatnonzero(need)


def _epoch_batches(n, batch, seed, epoch, per_epoch):
  """The example indices of one epoch's `per_epoch` batches, a row per step, each sorted."""
  order = np.random.default_rng([seed, epoch]).permutation(n)[:per_epoch * batch]
  return np.sort(order.reshape(per_epoch, batch), axis=1)


def usage(config, train, seed):
  """(Usage, Visits) of the run of `config` at `seed` on `train` (datasets.Arrays)."""
  per_epoch = fit.steps_per_epoch(config, train)
  v = Visits.of(len(train), config.batch_size, seed, config.epochs, per_epoch)
  return Usage(len(v.order), config.epochs * per_epoch * config.batch_size, len(train),
               math.prod(train.images.shape[1:]) * train.images.dtype.itemsize), v


def estimate(cut, u, r):
  """(saved_s, cost_s) of caching at `cut` for a run of Usage `u` at Rates `r`."""
  prefix_s = cut.flops_per_example / r.flops_per_s
  input_s = u.input_bytes / r.read_bytes_per_s
  saved = u.passes * (prefix_s + input_s)
  cost = (u.examples * (prefix_s + input_s + cut.feature_bytes / r.write_bytes_per_s)
          + u.passes * cut.feature_bytes / r.read_bytes_per_s)
  return saved, cost


def decide(cuts, u, *, budget, free_disk=None, always=False, r=None, min_gain_s=MIN_GAIN_S):
  """The Decision among `cuts` (Cut, shallow to deep) for Usage `u`: the cut with the largest
  estimated gain, cached when it gains at least `min_gain_s`; `always`: the deepest cut,
  whatever it costs. In RAM up to `budget` bytes, else on disk (infeasible over `free_disk`)."""
  r = r or rates()
  if not cuts:
    return Decision(False, 'no frozen layer below the lowest trainable one', usage=u, rates=r)
  best = None
  for cut in (cuts[-1:] if always else cuts):
    nbytes = u.examples * cut.feature_bytes
    location = 'memory' if nbytes <= budget else 'disk'
    if location == 'disk' and free_disk is not None and nbytes > free_disk and not always:
      continue
    d = Decision(False, '', cut, u, *estimate(cut, u, r), location, r)
    if best is None or d.saved_s - d.cost_s >= best.saved_s - best.cost_s:  # ties: deeper
      best = d
  if best is None:
    return Decision(False, f'every cut needs more disk than the {free_disk / 2**20:.0f} MiB '
                    'free', usage=u, rates=r)
  gain = best.saved_s - best.cost_s
  if always:
    return dataclasses.replace(best, cache=True, reason='config.prefix_cache_always')
  if gain < min_gain_s:
    why = (f'{u.passes:,} example passes over {u.examples:,} examples'
           if u.passes > u.examples else f'each of its {u.examples:,} examples is visited once')
    return dataclasses.replace(best, reason=(
        f'{why}; at its best cut (below {best.cut.layer}, '
        f'{best.cut.feature_bytes:,} B per example) caching would cost {best.cost_s:.2f} s to '
        f'save {best.saved_s:.2f} s (estimated; it must save {min_gain_s:g} s more than it '
        'costs)'))
  return dataclasses.replace(best, cache=True, reason=(
      f'saves {best.saved_s:.2f} s of prefix passes for {best.cost_s:.2f} s of filling and '
      f'reading (estimated; {u.passes:,} example passes)'))


def free_disk(directory):
  """Free bytes on the disk of `directory` or its nearest existing parent."""
  d = os.path.abspath(directory)
  while not os.path.exists(d):
    d = os.path.dirname(d)
  return shutil.disk_usage(d).free


_SHAPES = {}


def cuts(model, variables, input_shape, deepest, forward_flops_per_example, key=None):
  """The Cuts k in model.cut_points(), 0 < k <= `deepest`: the prefix's FLOPs as its share of
  the model's forward textbook MACs (costs.layer_macs) times `forward_flops_per_example` (the
  compiled count), its output's float32 bytes. `key`: caches the per-layer figures (they do not
  depend on which layers are frozen)."""
  if key is None or key not in _SHAPES:
    macs = [l['macs'] for l in costs.layer_macs(model, variables, input_shape)]
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    _, sown = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, mutable=[LAYER_OUTPUTS]),
                             variables, x)
    outs = sown[LAYER_OUTPUTS]
    out_bytes = [math.prod(outs[l.name + OUTPUT_SUFFIX][0].shape[1:]) * 4
                 for l in model.keras_layers()]
    _SHAPES.clear()  # the latest model's only
    _SHAPES[key] = (macs, out_bytes)
  macs, out_bytes = _SHAPES[key]
  names = [l.name for l in model.keras_layers()]
  total = sum(macs) or 1
  return [Cut(k, names[k] if k < len(names) else 'end',
              forward_flops_per_example * sum(macs[:k]) / total, out_bytes[k - 1])
          for k in model.cut_points() if 0 < k <= deepest]


def compiled_cut(compiled, batch):
  """The Cut of prefix_cache.Compiled steps: their compiled prefix's FLOPs, their features."""
  return Cut(compiled.cut, compiled.cut_layer, compiled.prefix_cost['flops'] / batch,
             math.prod(compiled.feature_shape) * 4)


def off_reason(config):
  """Why no run of `config` may cache, or None."""
  if not config.prefix_cache:
    return 'config.prefix_cache=False'
  if jax.process_count() > 1:
    return 'several processes'
  return None


def plan(config, model, variables, deepest, forward_flops_per_example, train):
  """The Decision of a case's plan (the first seed's run of `config` on `train`; None: the
  deepest cut, each run decides): which cut to compile, if any."""
  u = None if train is None else usage(config, train, compiled_lib.seed_of(config))[0]
  why = off_reason(config) or (deepest == 0 and 'no frozen layer below the lowest trainable one')
  if why:
    return Decision(False, why, usage=u)
  if train is None:
    return Decision(True, 'no train split to plan for: each run decides',
                    Cut(deepest, model.keras_layers()[deepest].name, 0.0, 0))
  shape = (config.image_size, config.image_size, config.channels)
  key = (config.model, compiled_lib.model_key(config), model.num_classes, shape)
  options = cuts(model, variables, shape, deepest, forward_flops_per_example, key)
  return decide(options, u, budget=prefix_cache.memory_budget(),
                always=config.prefix_cache_always)


def for_run(config, plan_decision, compiled, train, seed, cache_dir):
  """(Decision, its Visits or None) of one run: at the plan's compiled cut with the whole run's
  exact usage. Every part of a run (a rung, a resumed run) decides as the whole run does and
  fills the chunks of Visits its own steps read: the same features as the uninterrupted run."""
  if compiled is None:
    return plan_decision, None
  u, visits = usage(config, train, seed)
  d = decide([compiled_cut(compiled, config.batch_size)], u, budget=prefix_cache.memory_budget(),
             free_disk=free_disk(cache_dir), always=config.prefix_cache_always)
  return d, (visits if d.cache else None)
