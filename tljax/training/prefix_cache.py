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
  """Cached rows of a split, one per example in sorted `used`, indexed by the split's example
  indices: what datasets.train_batches reads as `arrays.images[idx]`."""

  def __init__(self, features, used):
    self.features, self.used = features, np.asarray(used)

  def __len__(self):
    return len(self.used)

  def __getitem__(self, idx):
    pos = np.searchsorted(self.used, idx)
    if np.any(pos >= len(self.used)) or np.any(self.used[np.minimum(pos, len(self.used) - 1)]
                                               != idx):
      raise IndexError('a batch asks for train examples the prefix cache did not fill')
    return self.features[pos]


@dataclasses.dataclass
class Cache:
  """Prefix activations of the train examples a run visits, as `datasets.Arrays` over the
  whole split (images: Rows)."""
  train: datasets.Arrays
  nbytes: int
  location: str  # 'memory' or 'disk'
  directory: Optional[str]
  batches: int  # prefix forward calls run
  seconds: float
  examples: int  # rows filled

  def delete(self):
    """Drops the arrays and the on-disk files."""
    self.train = None
    if self.directory:
      shutil.rmtree(self.directory, ignore_errors=True)


def _batches(arrays, used, batch, prep):
  """(prep(images), real examples) of `arrays`'s examples `used`, in batches of `batch`, the last
  one padded with zeros."""
  for start in range(0, len(used), batch):
    images = arrays.images[used[start:start + batch]]
    k = len(images)
    if k < batch:
      images = np.concatenate([images, np.zeros((batch - k,) + images.shape[1:], images.dtype)])
    yield prep(images), k


def build(compiled, state, train, used, *, batch, prep, directory, mesh, budget=None):
  """Runs the prefix over the examples `used` (sorted indices) of `train` in batches of `batch`.

  In RAM when the cache fits `budget` (default `memory_budget()`), else an np.memmap file in
  `directory` (removed by `Cache.delete`).
  """
  t0 = time.perf_counter()
  used = np.asarray(used)
  shape = (len(used),) + compiled.feature_shape
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
  start = calls = 0
  for images, k in datasets.prefetch(_batches(train, used, batch, prep)):
    y = compiled.prefix(state.params, state.batch_stats, mesh.put_batch(images))
    feats[start:start + k] = np.asarray(y)[:k]
    start += k
    calls += 1
  if on_disk:
    feats.flush()
  out = datasets.Arrays(Rows(feats, used), train.labels, train.num_classes, train.name,
                        train.split)
  seconds = time.perf_counter() - t0
  logging.info('Prefix cache: %d of %d train examples x %s float32 = %.1f MiB in %s (%.2f s)',
               len(used), len(train), compiled.feature_shape, nbytes / 2**20,
               directory if on_disk else 'memory', seconds)
  return Cache(out, nbytes, 'disk' if on_disk else 'memory', directory if on_disk else None,
               calls, seconds, len(used))
