"""Accounting: XLA's compiled FLOPs and memory, an analytic per-layer MAC count, energy."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Energy of one multiply-accumulate, 45 nm CMOS (the thesis's 3.2 pJ: int32 mult 3.1 + add 0.1,
# Horowitz ISSCC 2014). Energy = FLOPs / 2 x E_mac; memory traffic is counted apart
# (accounting/traffic.py).
DEFAULT_E_MAC_J = 3.2e-12


def xla_costs(compiled, num_devices=1):
  """FLOPs, bytes accessed and memory of a compiled computation (one call, global batch).

  A data-parallel (SPMD) executable reports the program of one device: its FLOPs and bytes
  are multiplied by `num_devices` to count the whole step; memory stays per device.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # very old jax returned a one-element list
    cost = cost[0]
  out = {
      'flops': float(cost.get('flops', 0.0)) * num_devices,
      'transcendentals': float(cost.get('transcendentals', 0.0)) * num_devices,
      'bytes_accessed': float(cost.get('bytes accessed', 0.0)) * num_devices,
      'devices': num_devices,
  }
  mem = compiled.memory_analysis()
  if mem is not None:
    out.update(
        temp_bytes=int(mem.temp_size_in_bytes),
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
    )
    # Peak live memory of the step: outputs that reuse donated argument buffers counted once.
    out['memory_bytes'] = (out['temp_bytes'] + out['argument_bytes'] + out['output_bytes']
                           - out['alias_bytes'])
  return out


# The depthwise-convolution formulation whose compiled FLOP count tljax reports, whichever one
# runs. XLA counts a grouped (feature_group_count=C) depthwise convolution's kernel gradient
# about C times too high: for a 5x5, 96-channel layer on 8x28x28, the gradient step counts
# 60.3 MFLOP as shifted slices (k*k multiply-adds per output, the textbook count) and
# 2,676.6 MFLOP grouped. So FLOPs are always read from the slices formulation: on CPU that is
# the program that runs ('auto'); where grouped convolutions run (GPU/TPU, or
# depthwise_impl='grouped'), the same steps are compiled a second time with slices, only to
# be counted.
COUNTED_DEPTHWISE_IMPL = 'slices'


def depthwise_impls(model):
  """(the depthwise formulation that runs, the one counted), or (None, None) for a model
  without depthwise convolutions."""
  impl = getattr(model, 'depthwise_impl', None)
  if impl is None:
    return None, None
  from tljax import models  # pylint: disable=g-import-not-at-top
  return models.resolve_depthwise_impl(impl), COUNTED_DEPTHWISE_IMPL


# The platform whose compiled steps give the reported FLOPs, whichever one trains. XLA:GPU runs
# convolutions as cuDNN library calls whose FLOPs its cost analysis does not count: the small
# CNN's head-only step measured 0.92 MFLOP per example on an H100 against 69.6 MFLOP on XLA:CPU
# (the textbook count is 76.6 MFLOP). So on any other backend the same steps are compiled a
# second time for the host CPU, only to be counted (docs/accounting.md "FLOPs per backend").
COUNTED_PLATFORM = 'cpu'


def counting_device():
  """The device the counting twin is compiled for: the host CPU (present on every backend)."""
  return jax.devices(COUNTED_PLATFORM)[0]


def counting_model(model):
  """The twin of `model` whose compiled steps give the reported FLOPs, compiled on
  counting_device(); None when the steps that run are counted as they are (XLA:CPU, and no
  depthwise convolutions or slices ones)."""
  ran, counted = depthwise_impls(model)
  if ran == counted and jax.default_backend() == COUNTED_PLATFORM:
    return None
  return model if ran == counted else model.clone(depthwise_impl=counted)


# The costs read from the counted twin, whichever program runs: its FLOPs, and the bytes accessed
# and transcendentals of the same count (docs/accounting.md "Memory traffic").
COUNTED_COSTS = ('flops', 'transcendentals', 'bytes_accessed')


def with_counted_flops(costs, counted_costs):
  """`costs` of the program that runs (memory), with the COUNTED_COSTS (FLOPs, transcendentals,
  bytes accessed) of its counted twin; the running program's own counts stay as
  '<name>_as_compiled' (each of them that `costs` has)."""
  names = [k for k in COUNTED_COSTS if k in costs]
  return {**costs, **{k: counted_costs[k] for k in names},
          **{f'{k}_as_compiled': costs[k] for k in names}}


def _module_macs(module, in_shape, out_shape):
  """Multiply-accumulates of one call of a Conv/Dense-like module, per example."""
  if hasattr(module, 'analytic_macs'):
    return int(module.analytic_macs(in_shape, out_shape))
  if isinstance(module, nn.Conv):
    k = math.prod(module.kernel_size)
    cin = in_shape[-1] // (module.feature_group_count or 1)
    return int(math.prod(out_shape[1:-1]) * k * cin * out_shape[-1])
  if isinstance(module, nn.Dense):
    return int(math.prod(out_shape[1:-1]) * in_shape[-1] * out_shape[-1])
  return 0


def layer_macs(model, variables, input_shape):
  """Forward MACs per example of every Keras layer of `model`, in Keras order.

  Counts the textbook multiply-accumulates of convolutions (dense, grouped and
  depthwise; SE blocks are 1x1 convolutions) and dense layers: output positions
  x kernel taps x input channels per group x output channels, SAME padding taps
  included. Normalisation, activations, pooling and elementwise ops count 0.
  Returns [{'name', 'kind', 'weighted', 'macs'}] ('weighted': the layer owns variables).
  """
  macs = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == '__call__' and mod.scope is not None and len(mod.scope.path) == 1:
      name = mod.scope.path[0]
      macs[name] = macs.get(name, 0) + _module_macs(mod, args[0].shape, out.shape)
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return [dict(name=l.name, kind=l.kind, weighted=l.weighted, macs=macs.get(l.name, 0))
          for l in model.keras_layers()]


# Parameters whose gradient is a reduction over the batch and positions (a conv/dense bias, a
# BatchNorm scale or shift): 0 multiply-accumulates, as their forward use counts 0 MACs.
ELEMENTWISE_PARAMS = ('bias', 'scale')


def analytic_train_macs(per_layer, trainable_params):
  """MACs per example of one training step, from the per-layer forward count.

  `trainable_params`: {layer: names of its trainable params}
  (`freezing.trainable_params_by_layer`; layers with none may be left out).
  forward: every layer (frozen ones too: the input must reach the trainable ones);
  weight_grad: the forward MACs of the layers whose MAC-carrying kernel trains (a trainable
    param other than ELEMENTWISE_PARAMS); a bias-only or norm-only layer pays none;
  input_grad: the input gradients of every layer above the lowest layer with ANY trainable
    param (the backward pass must reach that layer's output, not go below it: a bias-only case
    pays input gradients down to its lowest trainable bias; weightless layers below it, or a
    Dropout that trains nothing, need none, as in XLA's step);
  trainable_forward: = weight_grad, the forward MACs of the layers with a trainable kernel
    (the thesis's energy convention: `thesis_energy_per_example_j`).
  """
  if not isinstance(trainable_params, dict):
    raise ValueError(f'trainable_params={trainable_params!r}: must be a dict {{layer: trainable '
                     'param names}} (freezing.trainable_params_by_layer).')
  kernel = {name for name, ps in trainable_params.items()
            if any(p.split('/')[-1] not in ELEMENTWISE_PARAMS for p in ps)}
  idx = [i for i, l in enumerate(per_layer) if trainable_params.get(l['name'])]
  lowest = min(idx) if idx else len(per_layer)
  forward = sum(l['macs'] for l in per_layer)
  weight_grad = sum(l['macs'] for l in per_layer if l['name'] in kernel)
  input_grad = sum(l['macs'] for i, l in enumerate(per_layer) if i > lowest)
  return dict(forward=forward, weight_grad=weight_grad, input_grad=input_grad,
              total=forward + weight_grad + input_grad,
              trainable_forward=weight_grad)


def energy_j(flops, e_mac_j=DEFAULT_E_MAC_J):
  """The thesis's formula: energy = FLOPs / 2 x E_mac (one MAC = 2 FLOPs)."""
  return float(flops) / 2.0 * e_mac_j


def param_counts(variables, labels):
  """(trainable params, total variables): total counts batch statistics too, as Keras does."""
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
  trainable = sum(int(np.prod(p.shape)) for p, l in zip(jax.tree.leaves(variables['params']),
                                                        jax.tree.leaves(labels))
                  if l == 'trainable')
  return trainable, total
