"""The frozen features at a case's cut, a vector per example, and the feature scores on them.

A case's cut is prefix_cache.cut_index's: the activations below its lowest trainable layer
(the input of the first layer that trains). A case whose cut is 0 (every layer trains) has the
input pixels, preprocessed, as its features. The prefix runs in inference mode at the
pretrained weights, through the plan's compiled prefix forward where the plan caches the
prefix at that cut, else through one compiled here per cut (compiled.compile_step).
"""

import collections
import functools
import math
import time

from absl import logging
import jax.numpy as jnp
import numpy as np

from tljax.data import datasets
from tljax.data import inputs
from tljax.proxies import estimators
from tljax.training import compiled
from tljax.training import freezing
from tljax.training import prefix_cache

# A feature map larger than this many values per example is average-pooled down to it.
MAX_FEATURES = 2048
# The stream of np.random.default_rng([seed, PROXY_STREAM]) that orders the proxies' examples.
PROXY_STREAM = 0x9A0D


def proxy_order(n, seed):
  """The order in which proxies read the `n` train examples: a permutation fixed by `seed`."""
  return np.random.default_rng([int(seed), PROXY_STREAM]).permutation(n)


def subset(arrays, n, seed):
  """The first `n` examples (all when n is 0 or more than there are) of proxy_order, in index
  order, as datasets.Arrays."""
  order = proxy_order(len(arrays), seed)
  idx = np.sort(order[:n] if n else order)
  return datasets.Arrays(np.asarray(arrays.images[idx]), np.asarray(arrays.labels)[idx],
                         arrays.num_classes, arrays.name, arrays.split)


def pool(x, max_dim=MAX_FEATURES):
  """(B, ...) activations as (B, D) float32 vectors: a (B, H, W, C) map average-pooled in p x p
  windows (edge windows partial), p the smallest with ceil(H/p) ceil(W/p) C <= max_dim (global
  average pooling when C alone is more), then flattened; anything else flattened as it is."""
  x = np.asarray(x, np.float32)
  if x.ndim != 4 or math.prod(x.shape[1:]) <= max_dim:
    return x.reshape(len(x), -1)
  b, h, w, c = x.shape
  p = next((p for p in range(2, max(h, w) + 1)
            if math.ceil(h / p) * math.ceil(w / p) * c <= max_dim), max(h, w))
  hp, wp = math.ceil(h / p) * p, math.ceil(w / p) * p
  padded = np.full((b, hp, wp, c), np.nan, np.float32)
  padded[:, :h, :w] = x
  windows = padded.reshape(b, hp // p, p, wp // p, p, c)
  return np.nanmean(windows, axis=(2, 4)).reshape(b, -1)


def cut_of(case):
  """The case's cut: its prefix is layers [0, cut) (prefix_cache.cut_index)."""
  return prefix_cache.cut_index(case.model, case.trainable_names,
                                freezing.trainable_params_by_layer(case.labels))


def _forward(params, batch_stats, images, *, model, cut):
  return model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False,
                     stop=cut).astype(jnp.float32)


def prefix_fn(config, plan, cut, variables, mesh):
  """The compiled prefix forward (params, batch_stats, images) -> activations at `cut`: the
  plan's when it caches the prefix at `cut`, else compiled now; and its compile seconds."""
  if plan.cached is not None and plan.cached.cut == cut:
    return plan.cached.prefix, 0.0
  b = config.batch_size
  step = compiled.compile_step(
      functools.partial(_forward, model=plan.case.model, cut=cut),
      (variables['params'], variables.get('batch_stats', {}), compiled.input_spec(config, b)),
      ((mesh.replicated,) * 2 + (mesh.batch,), mesh.batch), config)
  return step.fn, step.seconds


def extract(config, plan, cut, variables, examples, mesh):
  """(features N x D float32, labels N, seconds) of `examples` (datasets.Arrays) at `cut`
  (0: the preprocessed input pixels), pooled per batch."""
  t0 = time.perf_counter()
  prep = inputs.prep_fn(config, config.target_dataset)
  fn = None
  if cut > 0:
    fn, _ = prefix_fn(config, plan, cut, variables, mesh)
    on_device = mesh.put_replicated(variables)
    params, stats = on_device['params'], on_device.get('batch_stats', {})
  out = []
  for images, _, mask in datasets.eval_batches(examples, config.batch_size, prep=prep):
    y = images if fn is None else np.asarray(fn(params, stats, mesh.put_batch(images)))
    out.append(pool(y)[:int(mask.sum())])
  return np.concatenate(out), np.asarray(examples.labels), time.perf_counter() - t0


def scores(config, plans, variables, train, seed, mesh, names):
  """{name: {case: {'score', 'cost_s'}}} of the estimators `names` (estimators.ESTIMATORS) for
  the cases of `plans` ({case: case.Plan}) on config.proxy_examples examples of `train` (subset).
  Cases with the same cut share its features and scores; each is charged an equal share of
  reading the examples, of extracting the features and of each estimator's time."""
  t0 = time.perf_counter()
  examples = subset(train, config.proxy_examples, seed)
  read_s = (time.perf_counter() - t0) / len(plans)
  by_cut = collections.defaultdict(list)
  for name, plan in plans.items():
    by_cut[cut_of(plan.case)].append(name)
  out = {n: {} for n in names}
  for cut, cases in sorted(by_cut.items()):
    f, y, extract_s = extract(config, plans[cases[0]], cut, variables, examples, mesh)
    for n in names:
      t0 = time.perf_counter()
      try:
        score = estimators.ESTIMATORS[n](f, y)
      except ValueError as e:  # NaN features, a decomposition that failed: no score
        logging.warning('Proxy %s at cut %d (%s): no score, %s', n, cut, ', '.join(cases), e)
        score = None
      share = (extract_s + time.perf_counter() - t0) / len(cases)
      for case in cases:
        out[n][case] = {'score': score, 'cost_s': share + read_s}
  return out


def cut_layers(plans):
  """{case: the first layer of its suffix, or 'input' for cut 0} (what the features are)."""
  out = {}
  for name, plan in plans.items():
    cut = cut_of(plan.case)
    out[name] = 'input' if cut == 0 else plan.case.layers[cut].name
  return out
