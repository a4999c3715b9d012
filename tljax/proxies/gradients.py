"""Gradient scores of the cases at the pretrained weights: Fisher potential, Auto-RGN, norm.

The loss's gradient is compiled once per model (compiled.compile_step) with respect to the
union of the cases' trainable parameters, whole model in inference mode (BatchNorm on its
moving statistics, no dropout): parameters no case trains are constants, so no backward pass
runs below the lowest layer any case trains. It runs over config.proxy_batches batches of the
train split; each case's scores then mask the per-tensor sums to its own trainable tensors.
"""

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from tljax.accounting import costs
from tljax.data import datasets
from tljax.data import inputs
from tljax.proxies import features
from tljax.runtime import backend
from tljax.training import compiled
from tljax.training import steps

NAMES = ('fisher', 'rgn', 'grad_norm')
# The latest compiled gradient (the search calls case_scores more than once per model).
_COMPILED = {}


def _grads(diff, params, batch_stats, images, labels, *, model, index):
  """Gradients of the mean cross-entropy with respect to the leaves `diff` (at positions `index`
  of the params' leaves; the others constant), and the sum of squares of each."""
  leaves, treedef = jax.tree.flatten(params)

  def loss(d):
    full = list(leaves)
    for i, x in zip(index, d):
      full[i] = x
    logits = model.apply({'params': jax.tree.unflatten(treedef, full),
                          'batch_stats': batch_stats}, images, train=False)
    return steps.cross_entropy(logits, labels).mean()

  g = jax.grad(loss)(list(diff))
  return g, jnp.stack([jnp.sum(jnp.square(x)) for x in g])


def trainable_leaves(case):
  """The case's trainable mask over the params' leaves (jax.tree.leaves order)."""
  return [bool(t) for t in jax.tree.leaves(case.trainable)]


def compile_grads(config, model, variables, index, mesh):
  """The gradient step compiled for `index` (cached per model, shapes, leaves and mesh) and
  the seconds compiling took now (0 when cached)."""
  b = config.batch_size
  params, stats = variables['params'], variables.get('batch_stats', {})
  leaves = jax.tree.leaves(params)
  key = (config.model, compiled.model_key(config), model.num_classes, config.image_size,
         config.channels, b, tuple(index), costs.depthwise_impls(model)[0],
         tuple(str(d) for d in mesh.devices),
         tuple(sorted(backend.compiler_options(config).items())))
  if key not in _COMPILED:
    step = compiled.compile_step(
        functools.partial(_grads, model=model, index=tuple(index)),
        ([leaves[i] for i in index], params, stats, compiled.input_spec(config, b),
         jax.ShapeDtypeStruct((b,), jnp.int32)),
        ((mesh.replicated,) * 3 + (mesh.batch,) * 2, mesh.replicated), config)
    _COMPILED.clear()
    _COMPILED[key] = step
    return step.fn, step.seconds
  return _COMPILED[key].fn, 0.0


def batches(config, train, seed):
  """The first config.proxy_batches batches (at most as many whole ones as `train` holds) of
  features.proxy_order: (images preprocessed, labels)."""
  b = config.batch_size
  order = features.proxy_order(len(train), seed)
  prep = inputs.prep_fn(config, config.target_dataset)
  count = min(int(config.proxy_batches), len(train) // b)
  if count < 1:
    raise ValueError(f'config.batch_size={b} is larger than the {len(train)} train examples: '
                     'the gradient proxies need one whole batch.')
  for i in range(count):
    idx = np.sort(order[i * b:(i + 1) * b])
    yield prep(np.asarray(train.images[idx])), np.asarray(train.labels[idx], np.int32)


def per_tensor(config, model, variables, index, train, seed, mesh):
  """Over the proxy batches, per differentiated tensor: (sum over batches of the squared
  gradient's sum, squared norm of the mean gradient, the weight's norm)."""
  fn, _ = compile_grads(config, model, variables, index, mesh)
  on_device = mesh.put_replicated(variables)
  params, stats = on_device['params'], on_device.get('batch_stats', {})
  leaves = jax.tree.leaves(params)
  diff = [leaves[i] for i in index]
  sq, total, count = np.zeros(len(index)), None, 0
  for images, labels in datasets.prefetch(batches(config, train, seed)):
    g, s = fn(diff, params, stats, mesh.put_batch(images), mesh.put_batch(labels))
    sq += np.asarray(s, np.float64)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
    count += 1
  mean_sq = np.asarray([float(jnp.sum(jnp.square(x / count))) for x in total])
  w_norm = np.asarray([float(jnp.linalg.norm(x.astype(jnp.float32))) for x in diff])
  return sq, mean_sq, w_norm


def case_scores(fisher_sq, mean_sq, w_norm, mask):
  """{'fisher', 'rgn', 'grad_norm'} of one case from per-tensor sums (its tensors: `mask`):
  Fisher potential sum_b sum_theta g_b(theta)^2; Auto-RGN's mean over its tensors (those with
  a nonzero weight norm) of |g| / |w|, g the mean gradient; the norm of g over its tensors."""
  m = np.asarray(mask, bool)
  ratios = np.sqrt(mean_sq[m & (w_norm > 0)]) / w_norm[m & (w_norm > 0)]
  return {'fisher': float(fisher_sq[m].sum()),
          'rgn': float(ratios.mean()) if len(ratios) else math.nan,
          'grad_norm': float(math.sqrt(mean_sq[m].sum()))}


def scores(config, plans, variables, train, seed, mesh, names=NAMES):
  """{name: {case: {'score', 'cost_s'}}} of the gradient proxies `names` for the cases of
  `plans`; the gradient is computed once for all of them, each case charged an equal share of
  its time (compilation included)."""
  masks = {n: trainable_leaves(p.case) for n, p in plans.items()}
  union = np.any(np.asarray(list(masks.values()), bool), axis=0)
  index = [int(i) for i in np.flatnonzero(union)]
  model = compiled.model_for(config, next(iter(plans.values())).case.model.num_classes)
  t0 = time.perf_counter()
  sq, mean_sq, w_norm = per_tensor(config, model, variables, index, train, seed, mesh)
  out = {n: {} for n in names}
  for case, mask in masks.items():
    got = case_scores(sq, mean_sq, w_norm, np.asarray(mask)[index])
    for n in names:
      out[n][case] = {'score': got[n]}
  share = (time.perf_counter() - t0) / len(masks)
  for n in names:
    for case in out[n]:
      out[n][case]['cost_s'] = share
  return out
