"""The device memory model: the bytes an edge device holds to train one case (TinyTL's model)."""

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models.base import LAYER_OUTPUTS, OUTPUT_SUFFIX
from tljax.training import freezing

# Bytes per element of the frozen weights on the device (config.device_frozen_dtype).
DTYPE_BYTES = {'float32': 4, 'float16': 2, 'bfloat16': 2, 'int8': 1}
F32_BYTES = 4
# Layers whose backward pass needs no stored tensor: linear and fixed (a reshape, a pad, a sum,
# a mean, a fixed affine map).
NOTHING_KEPT = ('Flatten', 'GlobalAveragePooling2D', 'Rescaling', 'ZeroPadding2D', 'Add',
                'Normalization', 'Reshape')
WEIGHTED_KINDS = ('Conv2D', 'DepthwiseConv2D', 'Dense')
KINDS = (WEIGHTED_KINDS + NOTHING_KEPT
         + ('BatchNormalization', 'Activation', 'ReLU', 'MaxPooling2D', 'Dropout', 'Multiply'))
ACTIVATIONS = (None, 'relu', 'relu6', 'hard_sigmoid', 'swish', 'hard_swish', 'sigmoid')
# Activations whose gradient is a constant on a set of inputs (ReLU: 1 on x > 0; ReLU6: 1 on
# 0 < x < 6; MobileNetV3's hard sigmoid relu6(x + 3) / 6: 1/6 on -3 < x < 3): a 1-bit mask per
# element serves their backward pass (TinyTL, Sec. 2: ReLU-like activations need only a binary
# mask; sigmoid, swish and h-swish need the full activation).
MASK_ACTIVATIONS = ('relu', 'relu6', 'hard_sigmoid')


def _trace(model, variables, input_shape, batch_size):
  """(layer output shapes, {Dropout layer: its broadcast dims}), by jax.eval_shape."""
  x = jax.ShapeDtypeStruct((batch_size,) + tuple(input_shape), jnp.float32)
  variables = {k: v for k, v in variables.items() if k != LAYER_OUTPUTS}
  broadcast = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, nn.Dropout) and mod.scope is not None and len(mod.scope.path) == 1:
      broadcast[mod.scope.path[0]] = tuple(mod.broadcast_dims)
    return next_fun(*args, **kwargs)

  def outputs(v, x):
    return model.apply(v, x, train=False, mutable=[LAYER_OUTPUTS])[1][LAYER_OUTPUTS]

  with nn.intercept_methods(interceptor):
    sown = jax.eval_shape(outputs, variables, x)
  shapes = {name.removesuffix(OUTPUT_SUFFIX): tuple(value[0].shape)
            for name, value in sown.items() if name.endswith(OUTPUT_SUFFIX)}
  return shapes, broadcast


def _layer_params(variables):
  """{layer: {param name ('kernel', or 'a/b' when nested): array or shape struct}}."""
  params = flax.core.unfreeze(variables.get('params', {}))
  return {layer: flax.traverse_util.flatten_dict(p, sep='/') for layer, p in params.items()}


def _size(x):
  return int(math.prod(x.shape))


def _check_inputs(layers, params, trainable_params, active_layers, frozen_dtype, batch_size,
                  optimizer_slots):
  """ValueError for anything the model cannot count, naming it and what is accepted."""
  if frozen_dtype not in DTYPE_BYTES:
    raise ValueError(f'frozen_dtype={frozen_dtype!r}: must be one of {tuple(DTYPE_BYTES)}.')
  for name, value, least in (('batch_size', batch_size, 1),
                             ('optimizer_slots', optimizer_slots, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f'{name}={value!r}: must be an int >= {least}.')
  for l in layers:
    if l.kind not in KINDS:
      raise ValueError(f'Layer {l.name!r} has kind {l.kind!r}, which the device memory model '
                       f'does not know; known kinds: {", ".join(KINDS)}.')
    if l.activation not in ACTIVATIONS:
      raise ValueError(f'Layer {l.name!r} has activation {l.activation!r}; known: {ACTIVATIONS}.')
  for layer, names in trainable_params.items():
    if layer not in params:
      raise ValueError(f'trainable_params names layer {layer!r}, which is not a layer with '
                       f'parameters; those are: {", ".join(params)}.')
    for p in names:
      if p not in params[layer]:
        raise ValueError(f'trainable_params[{layer!r}] names {p!r}; layer {layer!r} has '
                         f'parameters {tuple(params[layer])}.')
  unknown = set(active_layers) - {l.name for l in layers}
  if unknown:
    raise ValueError(f'active_layers names {sorted(unknown)}, not layers of the model.')


def weight_bytes(variables, trainable_params, frozen_dtype='float32'):
  """Trainable parameters float32, frozen ones at `frozen_dtype`, batch statistics float32:
  {'trainable_weights_bytes', 'frozen_weights_bytes', 'batch_stats_bytes', 'weights_bytes',
  'trainable_param_count', 'layer_trainable_bytes': {layer: its trainable float32 bytes}}."""
  trainable = frozen = 0
  per_layer = {}
  for layer, params in _layer_params(variables).items():
    train = set(trainable_params.get(layer, ()))
    n = sum(_size(x) for p, x in params.items() if p in train)
    trainable += n
    frozen += sum(_size(x) for p, x in params.items() if p not in train)
    per_layer[layer] = F32_BYTES * n
  stats = sum(_size(x) for x in jax.tree.leaves(variables.get('batch_stats', {})))
  out = dict(trainable_weights_bytes=F32_BYTES * trainable,
             frozen_weights_bytes=DTYPE_BYTES[frozen_dtype] * frozen,
             batch_stats_bytes=F32_BYTES * stats)
  out['weights_bytes'] = sum(out.values())
  return dict(out, trainable_param_count=trainable, layer_trainable_bytes=per_layer)


def _activation_kept(activation, out_elems):
  """(bytes, why) an activation function keeps for its backward pass."""
  if activation is None:
    return 0, ''
  if activation in MASK_ACTIVATIONS:
    return -(-out_elems // 8), f'{activation} 1-bit mask'
  if activation in ('swish', 'hard_swish'):
    return F32_BYTES * out_elems, f'{activation} input'
  return F32_BYTES * out_elems, 'sigmoid output'


def _weighted_kept(layer, in_elems, out_elems, trains):
  """Conv2D / DepthwiseConv2D / Dense: the input if the kernel trains, plus the activation's."""
  kernel = any(p != 'bias' for p in trains)
  act, act_why = _activation_kept(layer.activation, out_elems)
  why = ' + '.join(w for w in ('input for the kernel gradient' if kernel else '', act_why) if w)
  return (F32_BYTES * in_elems if kernel else 0) + act, why or 'nothing: frozen kernel'


def _bn_kept(in_elems, trains, active, lowest):
  """BatchNorm: training mode keeps its input (above the lowest trainable layer); inference
  mode (moving statistics: a fixed affine map, as bias:N's) keeps it only for its own scale
  gradient: its input gradient is a per-channel scale and its shift's gradient needs only the
  output gradient."""
  if active and not lowest:
    return F32_BYTES * in_elems, 'input (training mode, batch statistics)'
  if 'scale' in trains:
    return F32_BYTES * in_elems, 'input for the scale gradient'
  return 0, 'nothing: inference mode, scale frozen (backward is a scale)'


def _kept(layer, in_elems, out_elems, trains, active, lowest, mask_elems):
  """(bytes, why) layer `layer` keeps for the backward pass, at or above the lowest trainable
  layer; in_elems / out_elems: its input / output elements at the batch; mask_elems: a
  Dropout's mask elements (fewer than its output when broadcast, as drop-connect's)."""
  kind = layer.kind
  if kind in WEIGHTED_KINDS:
    return _weighted_kept(layer, in_elems, out_elems, trains)
  if kind == 'BatchNormalization':
    return _bn_kept(in_elems, trains, active, lowest)
  if kind in ('Activation', 'ReLU'):
    kept, why = _activation_kept(layer.activation, out_elems)
    return kept, why or 'nothing: linear'
  if kind == 'MaxPooling2D':  # an argmax index into its window per output element
    bits = math.ceil(math.log2(max(in_elems // out_elems, 2)))
    return -(-out_elems * bits // 8), f'{bits}-bit argmax index per output'
  if kind == 'Dropout':
    return (-(-mask_elems // 8), '1-bit mask') if active else (0, 'nothing: inactive')
  if kind == 'Multiply':  # x * excitation: both inputs (the excitation is the previous layer)
    return F32_BYTES * (out_elems + in_elems), 'both inputs'
  return 0, 'nothing: linear, fixed'


def _activations(model, layers, trace, input_shape, trainable_params, active_layers,
                 batch_size):
  """Per layer {'name', 'kind', 'output_shape', 'kept_bytes', 'why'}, in Keras order."""
  has = [i for i, l in enumerate(layers) if trainable_params.get(l.name)]
  lowest = min(has) if has else len(layers)
  keras_dropout = getattr(model, 'frozen_dropout', 'off') == 'keras'
  shapes, broadcast = trace
  prev = batch_size * math.prod(input_shape)
  rows = []
  for i, l in enumerate(layers):
    if l.inputs:  # a branch's layer (ResNet's shortcut): its own inputs, not the previous layer
      prev = sum(math.prod(shapes[n]) for n in l.inputs)
    out = math.prod(shapes[l.name])
    mask = math.prod(n for d, n in enumerate(shapes[l.name]) if d not in broadcast.get(l.name, ()))
    active = l.name in active_layers or (l.kind == 'Dropout' and keras_dropout)
    if i < lowest:
      kept, why = 0, 'nothing: below the lowest trainable layer'
    else:
      kept, why = _kept(l, prev, out, tuple(trainable_params.get(l.name, ())), active,
                        i == lowest, mask)
    rows.append(dict(name=l.name, kind=l.kind, output_shape=list(shapes[l.name]),
                     kept_bytes=int(kept), why=why))
    prev = out
  return rows


def device_train_memory(model, variables, trainable_params, active_layers, input_shape, *,
                        batch_size=1, frozen_dtype='float32', optimizer_slots=2):
  """Bytes an edge device holds to train `model` at `batch_size` (TinyTL's model; see
  docs/accounting.md "The device memory model").

  trainable_params: {layer name: param names that train}; active_layers: layers in training
  mode (BatchNorm on batch statistics, Dropout dropping). total = weights + one layer's
  gradient (updates applied layer by layer) + optimizer slots + kept activations + the
  largest layer output.
  """
  layers = model.keras_layers()
  params = _layer_params(variables)
  _check_inputs(layers, params, trainable_params, active_layers, frozen_dtype, batch_size,
                optimizer_slots)
  trace = _trace(model, variables, input_shape, batch_size)
  w = weight_bytes(variables, trainable_params, frozen_dtype)
  rows = _activations(model, layers, trace, input_shape, trainable_params,
                      set(active_layers), batch_size)
  out = {k: w[k] for k in ('weights_bytes', 'trainable_weights_bytes', 'frozen_weights_bytes',
                           'batch_stats_bytes')}
  out.update(
      gradient_bytes=F32_BYTES * w['trainable_param_count'],
      layer_gradient_bytes=max(w['layer_trainable_bytes'].values(), default=0),
      optimizer_bytes=optimizer_slots * F32_BYTES * w['trainable_param_count'],
      activation_bytes=sum(r['kept_bytes'] for r in rows),
      largest_temp_bytes=F32_BYTES * max(math.prod(s) for s in trace[0].values()))
  out['total_bytes'] = (out['weights_bytes'] + out['layer_gradient_bytes']
                        + out['optimizer_bytes'] + out['activation_bytes']
                        + out['largest_temp_bytes'])
  return dict(out, batch_size=batch_size, frozen_dtype=frozen_dtype, layers=rows)


def case_inputs(case):
  """(trainable_params, active_layers) of a `case.Case`: the parameters its labels mark
  trainable, and the layers its model runs in training mode (those not in `model.frozen`)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(case.labels), sep='/')
  trainable = {}
  for path, label in flat.items():
    layer, _, name = path.partition('/')
    if label == freezing.TRAINABLE:
      trainable.setdefault(layer, []).append(name)
  frozen = getattr(case.model, 'frozen', frozenset())
  active = tuple(l.name for l in case.layers if l.name not in frozen)
  return {k: tuple(v) for k, v in trainable.items()}, active


def case_device_memory(case, config):
  """`device_train_memory` of a `case.Case` at config.device_batch_size and
  config.device_frozen_dtype."""
  trainable_params, active = case_inputs(case)
  return device_train_memory(
      case.model, case.variables, trainable_params, active,
      (config.image_size, config.image_size, config.channels),
      batch_size=config.device_batch_size, frozen_dtype=config.device_frozen_dtype)


def xla_cross_check(cost, batch_size, device_memory):
  """The cross-check of the model against XLA's memory analysis (`cost`: costs.xla_costs of the
  case's train step compiled at `batch_size`, one device, the state donated as in training).

  device_memory: the case's `case_device_memory` breakdown.
  Returns {'batch_size', 'memory_bytes', 'temp_bytes', 'argument_bytes', 'output_bytes',
  'alias_bytes', 'model_total_bytes', 'device_to_xla_memory' (model / XLA)}.
  """
  model_bytes = device_memory['total_bytes']
  xla = cost.get('memory_bytes')
  out = {k: cost.get(k) for k in ('memory_bytes', 'temp_bytes', 'argument_bytes',
                                  'output_bytes', 'alias_bytes')}
  return dict(out, batch_size=batch_size, model_total_bytes=model_bytes,
              device_to_xla_memory=model_bytes / xla if xla else None)
