"""Frozen-prefix caching: the frozen layers below a case's trainable ones run once per example.

Frozen layers are deterministic (inference-mode BatchNorm, no augmentation) up to the lowest
Dropout layer that drops units in training (any Dropout with frozen_dropout='keras', none
below the trainable layers with 'off'), so the output of the frozen layers below both never
changes during a case. The model is split at a cut k (a
layer index where one tensor crosses, `model.cut_points()`): layers [0, k) run once over every
train example the run visits (the cache, float32, in memory or memory-mapped on disk), and
training runs layers [k, end) on the cached activations; the test split is evaluated on the
whole model. Whether and where a run caches is cache_plan's cost model. The train state keeps
the whole model's params tree, so checkpoints are the same with and without the cache.
"""

import dataclasses
import functools
import math
import os
import shutil
import time
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import psutil

from tljax.accounting import costs
from tljax.data import datasets
from tljax.models.base import TRAIN_MODE_KINDS, active_dropout_layers
from tljax.runtime import parallel
from tljax.runtime import report
from tljax.training import compiled as compiled_lib
from tljax.training.steps import eval_step, train_step

# Caches larger than this (or than a quarter of the available RAM) go to disk (np.memmap).
MEMORY_BUDGET_BYTES = 2 * 2**30


def memory_budget():
  """Bytes the cache may take in RAM."""
  return int(min(MEMORY_BUDGET_BYTES, psutil.virtual_memory().available // 4))


def cut_index(model, trainable_names, trainable_params=None):
  """The latest cut at or below the lowest active layer and the lowest active Dropout:
  layers [0, cut) are the prefix.

  `trainable_names`: the case's active layers (`freezing.CaseSpec.active_layers`: those in
  training mode), so a BatchNorm in training mode or a layer with a trainable param is never
  in the prefix. Leading active layers without a training mode and without a trainable param
  (pooling, flatten, activations; with `trainable_params` = {layer: trainable param names},
  also a conv whose kernel stays frozen in a norm or bias case) compute the same either way,
  so they join the prefix: head-only EfficientNet caches the pooled 1280 features, not the
  7x7x1280 map. A Dropout that drops units in training (a frozen one with
  frozen_dropout='keras') is random per step, so the prefix stops below it. A layer in
  `trainable_params` is never in the prefix, active or not (bias:N's BatchNorms train their
  shift in inference mode).
  """
  layers = model.keras_layers()
  names = [l.name for l in layers]
  owners = [n for n, ps in (trainable_params or {}).items() if ps]
  lowest = min(names.index(n) for n in tuple(trainable_names) + tuple(owners))
  owns = (lambda l: bool(trainable_params.get(l.name))) if trainable_params is not None else (
      lambda l: l.weighted)
  while (lowest < len(layers) and not owns(layers[lowest])
         and layers[lowest].kind not in TRAIN_MODE_KINDS):
    lowest += 1
  case_model = model.clone(frozen=frozenset(names) - set(trainable_names))
  lowest = min((lowest,) + active_dropout_layers(case_model))
  return max(k for k in model.cut_points() if k <= lowest)


class Suffix:
  """`model` run from layer `start` on, behind the module's `apply` signature.

  The same module with `start`: the same variable names and dropout RNG paths, so the same
  numbers as the whole model up to float reassociation.
  """

  def __init__(self, model, start):
    self.model, self.start = model, start

  def apply(self, variables, x, **kwargs):
    return self.model.apply(variables, x, start=self.start, **kwargs)


def _prefix_forward(params, batch_stats, images, *, model, cut):
  return model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False,
                     stop=cut).astype(jnp.float32)


@dataclasses.dataclass
class Compiled:
  """The compiled prefix forward and suffix steps of one case, with their XLA costs."""
  cut: int
  cut_layer: str  # the first layer of the suffix
  feature_shape: tuple  # per example
  prefix: Any
  train: Any
  eval: Any
  prefix_cost: dict
  train_cost: dict
  eval_cost: dict
  compile_s: float


def compile_steps(model, tx, trainable, state, config, eval_batch, cut, mesh=None):
  """Compiles the prefix forward and the suffix train step (at config.batch_size) and the
  suffix eval step (at `eval_batch`) over `mesh` (default: one device; the counting device's
  for the twin that is only counted). The prefix runs at the train batch: on 2 CPU cores,
  filling B0's cache (224x224, 1,536 images) plus 10 suffix epochs took 20.7 s at batch 32
  against 26.8 s at 256, and its rounding matches the uncached step's (identical losses).
  """
  mesh = parallel.default(mesh)
  b = config.batch_size
  image = jax.ShapeDtypeStruct((b, config.image_size, config.image_size, config.channels),
                               jnp.float32)
  forward = functools.partial(_prefix_forward, model=model, cut=cut)
  prefix = compiled_lib.compile_step(
      forward, (state.params, state.batch_stats, image),
      ((mesh.replicated,) * 2 + (mesh.batch,), mesh.batch), config)
  feature_shape = tuple(jax.eval_shape(forward, state.params, state.batch_stats,
                                       image).shape[1:])

  def features(batch):
    return jax.ShapeDtypeStruct((batch,) + feature_shape, jnp.float32)

  labels = lambda batch: jax.ShapeDtypeStruct((batch,), jnp.int32)
  train = compiled_lib.compile_step(
      functools.partial(train_step, model=Suffix(model, cut), tx=tx, trainable=trainable),
      (state, features(b), labels(b)), compiled_lib.train_shardings(mesh), config, donate=True)
  ev = compiled_lib.compile_step(
      functools.partial(eval_step, model=Suffix(model, cut)),
      (state.params, state.batch_stats, features(eval_batch), labels(eval_batch),
       jax.ShapeDtypeStruct((eval_batch,), jnp.float32)), compiled_lib.eval_shardings(mesh),
      config)
  return Compiled(cut, model.keras_layers()[cut].name, feature_shape, prefix.fn, train.fn,
                  ev.fn, prefix.cost, train.cost, ev.cost,
                  prefix.seconds + train.seconds + ev.seconds)


def count_on(compiled, twin):
  """Gives `compiled` the FLOPs of `twin`, the same steps in the counted formulation
  (costs.counting_model); memory and timings stay those of the steps that run."""
  for name in ('prefix_cost', 'train_cost', 'eval_cost'):
    setattr(compiled, name, costs.with_counted_flops(getattr(compiled, name),
                                                          getattr(twin, name)))
  compiled.compile_s += twin.compile_s


def identity_prep(features):
  """The `prep` of cached activations: they are model inputs already."""
  return np.ascontiguousarray(features, np.float32)


class Rows:
  """The cached rows of a split's examples (cache_plan.Visits's order), indexed by the split's
  example indices: what datasets.train_batches reads as `arrays.images[idx]`."""

  def __init__(self, features, visits, filled):
    self.features, self.visits, self.filled = features, visits, filled

  def __len__(self):
    return len(self.features)

  def __getitem__(self, idx):
    rows = self.visits.row_of[idx]
    if np.any(rows < 0) or not self.filled[rows // self.visits.batch].all():
      raise IndexError('a batch asks for train examples the prefix cache did not fill')
    return self.features[rows]


@dataclasses.dataclass
class Cache:
  """Prefix activations of the train examples a run visits, as `datasets.Arrays` over the
  whole split (images: Rows), filled chunk by chunk (`fill`)."""
  train: datasets.Arrays
  nbytes: int  # every row the run visits: what the cache may come to hold
  location: str  # 'memory' or 'disk'
  directory: Optional[str]
  key: tuple  # (cut, seed, batch, rows): the run it serves
  rows: int  # the distinct train examples the whole run visits
  chunks: int  # its fill calls, whichever parts of the run make them
  batches: int = 0  # prefix forward calls run in this process
  seconds: float = 0.0  # their wall time
  examples: int = 0  # rows filled in this process

  @property
  def filled_bytes(self):
    return self.nbytes * self.examples // max(self.rows, 1)

  def fill(self, compiled, state, source, chunks, *, prep, mesh):
    """Runs the prefix over the rows of `chunks` (cache_plan.Visits.chunks) not filled yet, a
    chunk per call, the last one padded with zeros."""
    t0 = time.perf_counter()
    rows = self.train.images
    todo = [int(k) for k in chunks if not rows.filled[k]]
    b = rows.visits.batch
    for k, images, n in datasets.prefetch(_batches(source, rows.visits, todo, prep)):
      y = compiled.prefix(state.params, state.batch_stats, mesh.put_batch(images))
      rows.features[k * b:k * b + n] = np.asarray(y)[:n]
      rows.filled[k] = True
      self.examples += n
    self.batches += len(todo)
    self.seconds += time.perf_counter() - t0
    logging.info('Prefix cache: %d of %d chunks of %d rows filled (%d of %d rows, %.2f s)',
                 len(todo), len(chunks), b, self.examples, len(rows),
                 time.perf_counter() - t0)

  def delete(self):
    """Drops the arrays and the on-disk files."""
    self.train = None
    if self.directory:
      shutil.rmtree(self.directory, ignore_errors=True)


def _batches(arrays, visits, chunks, prep):
  """(chunk, prep(images), real examples) of each chunk of `chunks`: `visits.batch` rows of
  visits.order, the last chunk padded with zeros."""
  b = visits.batch
  for k in chunks:
    images = arrays.images[visits.order[k * b:(k + 1) * b]]
    n = len(images)
    if n < b:
      images = np.concatenate([images, np.zeros((b - n,) + images.shape[1:], images.dtype)])
    yield k, prep(images), n


def build(compiled, train, visits, *, directory, budget=None):
  """An empty Cache of the rows of `visits` (cache_plan.Visits) over `train`: in RAM when it
  fits `budget` (default `memory_budget()`), else an np.memmap file in `directory` (removed by
  `Cache.delete`). Cache.fill fills it."""
  shape = (len(visits.order),) + compiled.feature_shape
  nbytes = math.prod(shape) * 4
  on_disk = nbytes > (memory_budget() if budget is None else budget)
  if on_disk:
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    report.require_free_disk(directory, nbytes, 'The prefix cache',
                             'pass --config.prefix_cache=False to train without it.')
    feats = np.lib.format.open_memmap(os.path.join(directory, f'{train.split}.npy'), 'w+',
                                      np.float32, shape)
  else:
    feats = np.empty(shape, np.float32)
  rows = Rows(feats, visits, np.zeros(visits.chunks_total, bool))
  logging.info('Prefix cache: %d of %d train examples x %s float32 = %.1f MiB in %s',
               len(visits.order), len(train), compiled.feature_shape, nbytes / 2**20,
               directory if on_disk else 'memory')
  return Cache(datasets.Arrays(rows, train.labels, train.num_classes, train.name, train.split),
               nbytes, 'disk' if on_disk else 'memory', directory if on_disk else None,
               (compiled.cut, visits.seed, visits.batch, len(visits.order)), len(visits.order),
               visits.chunks_total)


class Kept:
  """The caches of runs paused at a search's rung, kept in this process for the run's next part
  (in RAM up to memory_budget() together; on disk as they are)."""

  def __init__(self):
    self.caches = {}

  def take(self, run, key):
    """Run `run`'s kept Cache if it serves `key` (Cache.key), else None."""
    cache = self.caches.pop(run, None)
    if cache is not None and cache.key != key:
      cache.delete()
      return None
    return cache

  def keep(self, run, cache):
    """Keeps `cache` for run `run`'s next part (or deletes it: over the memory budget)."""
    held = sum(c.filled_bytes for c in self.caches.values() if c.location == 'memory')
    if cache.location == 'memory' and held + cache.filled_bytes > memory_budget():
      cache.delete()
    else:
      self.caches[run] = cache

  def release(self, run=None):
    """Deletes run `run`'s kept cache (None: all)."""
    for r in ([run] if run is not None else list(self.caches)):
      cache = self.caches.pop(r, None)
      if cache is not None:
        cache.delete()
