"""MobileNetV3Small and MobileNetV3Large as Flax modules, layer for layer equal to Keras's."""

import dataclasses
from typing import Optional

import jax.numpy as jnp

from tljax.models.base import KerasLayer
from tljax.models.efficientnet import DepthwiseConv2D
from tljax.models.keras_graph import (ACTIVATIONS, DW_INIT, KerasGraph, add, excite, keep_input,
                                      on, pad_for, squeeze)
from tljax.models.mobilenet_v2 import make_divisible

BN_MOMENTUM = 0.999
SE_RATIO = 0.25

# keras.applications's stack_fn: (expansion, filters, kernel, stride, squeeze-excite, activation)
# per block_id; kernel 'k' and activation 'act' are the model's (5 and hard-swish, or 3 and ReLU
# when minimalistic); se True = se_ratio (none when minimalistic).
_STACKS = {
    'small': ((1, 16, 3, 2, True, 'relu'), (72 / 16, 24, 3, 2, False, 'relu'),
              (88 / 24, 24, 3, 1, False, 'relu'), (4, 40, 'k', 2, True, 'act'),
              (6, 40, 'k', 1, True, 'act'), (6, 40, 'k', 1, True, 'act'),
              (3, 48, 'k', 1, True, 'act'), (3, 48, 'k', 1, True, 'act'),
              (6, 96, 'k', 2, True, 'act'), (6, 96, 'k', 1, True, 'act'),
              (6, 96, 'k', 1, True, 'act')),
    'large': ((1, 16, 3, 1, False, 'relu'), (4, 24, 3, 2, False, 'relu'),
              (3, 24, 3, 1, False, 'relu'), (3, 40, 'k', 2, True, 'relu'),
              (3, 40, 'k', 1, True, 'relu'), (3, 40, 'k', 1, True, 'relu'),
              (6, 80, 3, 2, False, 'act'), (2.5, 80, 3, 1, False, 'act'),
              (2.3, 80, 3, 1, False, 'act'), (2.3, 80, 3, 1, False, 'act'),
              (6, 112, 3, 1, True, 'act'), (6, 112, 3, 1, True, 'act'),
              (6, 160, 'k', 2, True, 'act'), (6, 160, 'k', 1, True, 'act'),
              (6, 160, 'k', 1, True, 'act')),
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One inverted-residual block as Keras builds it."""
  prefix: str  # 'expanded_conv_' for block 0, else 'expanded_conv_{id}_'
  filters_in: int
  expanded: int
  filters_out: int
  kernel_size: int
  strides: int
  se_filters: Optional[int]  # None: no squeeze-excite
  activation: str  # 'relu' or 'hard_swish'

  @property
  def has_skip(self) -> bool:
    return self.strides == 1 and self.filters_in == self.filters_out


def block_specs(model_type: str, alpha: float, minimalistic: bool) -> tuple[BlockSpec, ...]:
  if model_type not in _STACKS:
    raise ValueError(f"MobileNetV3 model_type={model_type!r}: must be 'small' or 'large'.")
  kernel, act = (3, 'relu') if minimalistic else (5, 'hard_swish')
  channels, specs = 16, []
  for i, (expansion, filters, k, strides, se, a) in enumerate(_STACKS[model_type]):
    expanded = make_divisible(channels * expansion) if i else channels
    out = make_divisible(filters * alpha)
    se_filters = make_divisible(expanded * SE_RATIO) if se and not minimalistic else None
    specs.append(BlockSpec(f'expanded_conv_{i}_' if i else 'expanded_conv_', channels, expanded,
                           out, kernel if k == 'k' else k, strides, se_filters,
                           act if a == 'act' else a))
    channels = out
  return tuple(specs)


class _Names:
  """Keras's automatic names of the Activation and ReLU layers, in a fresh session."""

  def __init__(self):
    self.count = {}

  def activation(self, function, block):
    kind, base = ('Activation', 'activation') if function == 'hard_swish' else ('ReLU', 're_lu')
    n = self.count.get(base, 0)
    self.count[base] = n + 1
    return KerasLayer(base + (f'_{n}' if n else ''), kind, False, block=block,
                      activation=function)


def _block_layers(s: BlockSpec, names: _Names) -> list[KerasLayer]:
  p, block = s.prefix, s.prefix[:-1]
  out = []
  if p != 'expanded_conv_':
    out += [KerasLayer(p + 'expand', 'Conv2D', True),
            KerasLayer(p + 'expand_bn', 'BatchNormalization', True),
            names.activation(s.activation, block)]
  if s.strides == 2:
    out.append(KerasLayer(p + 'depthwise_pad', 'ZeroPadding2D', False))
  out += [KerasLayer(p + 'depthwise', 'DepthwiseConv2D', True),
          KerasLayer(p + 'depthwise_bn', 'BatchNormalization', True),
          names.activation(s.activation, block)]
  if s.se_filters:
    se = p + 'squeeze_excite_'
    out += [KerasLayer(se + 'avg_pool', 'GlobalAveragePooling2D', False),
            KerasLayer(se + 'conv', 'Conv2D', True),
            KerasLayer(se + 'relu', 'ReLU', False, activation='relu'),
            KerasLayer(se + 'conv_1', 'Conv2D', True),
            names.activation('hard_sigmoid', block),
            KerasLayer(se + 'mul', 'Multiply', False)]
  out += [KerasLayer(p + 'project', 'Conv2D', True),
          KerasLayer(p + 'project_bn', 'BatchNormalization', True)]
  if s.has_skip:
    out.append(KerasLayer(p + 'add', 'Add', False))
  return [dataclasses.replace(l, block=block) for l in out]


def layer_list(model_type: str, alpha: float, minimalistic: bool) -> list[KerasLayer]:
  """Keras's `model.layers` (include_top=False, include_preprocessing=True) in a fresh Keras
  session, InputLayer left out: blocks 'stem', 'expanded_conv', 'expanded_conv_1', .., 'top'
  (named after the weighted layers: the automatic names of the activations are Keras's in a
  fresh session, and shift in a session that built other models first)."""
  names = _Names()
  act = 'relu' if minimalistic else 'hard_swish'
  layers = [KerasLayer('rescaling', 'Rescaling', False, block='stem'),
            KerasLayer('conv', 'Conv2D', True, block='stem'),
            KerasLayer('conv_bn', 'BatchNormalization', True, block='stem'),
            names.activation(act, 'stem')]
  for s in block_specs(model_type, alpha, minimalistic):
    layers += _block_layers(s, names)
  return layers + [KerasLayer('conv_1', 'Conv2D', True, block='top'),
                   KerasLayer('conv_1_bn', 'BatchNormalization', True, block='top'),
                   names.activation(act, 'top')]


class MobileNetV3(KerasGraph):
  """keras.applications.MobileNetV3Small / Large (model_type 'small' / 'large') in Flax.

  Input (N, H, W, 3) RGB floats in [0, 255], as Keras's (its Rescaling to [-1, 1] is the
  model's first layer). Other fields: KerasGraph's.
  """
  model_type: str = 'large'
  alpha: float = 1.0
  minimalistic: bool = False
  depthwise_impl: str = 'auto'
  bn_momentum: float = BN_MOMENTUM

  def _specs(self):
    return block_specs(self.model_type, self.alpha, self.minimalistic)

  def base_layers(self):
    return layer_list(self.model_type, self.alpha, self.minimalistic)

  def _base_ops(self, train):
    last = self._specs()[-1].filters_out
    ops = {
        'rescaling': on('x', lambda x: jnp.asarray(x, jnp.float32) * jnp.float32(1.0 / 127.5)
                        - jnp.float32(1.0)),
        'conv': on('x', lambda x: self.conv('conv', 16, 3, 2)(x)),
        'conv_1': on('x', lambda x: self.conv('conv_1', make_divisible(last * 6))(x)),
    }
    for s in self._specs():
      ops.update(self._block_ops(s))
    for l in self.base_layers():
      if l.kind == 'BatchNormalization':
        ops[l.name] = on('x', self.bn(l.name, train))
      elif l.kind in ('ReLU', 'Activation') and l.name not in ops:
        ops[l.name] = on('branch' if l.activation == 'hard_sigmoid' else 'x',
                         ACTIVATIONS[l.activation])
    return ops

  def _block_ops(self, s: BlockSpec):
    p, se = s.prefix, s.prefix + 'squeeze_excite_'
    ops = {
        p + 'expand': on('x', lambda x: self.conv(p + 'expand', s.expanded)(x)),
        p + 'depthwise_pad': on('x', pad_for(s.kernel_size)),
        p + 'depthwise': on('x', lambda x: DepthwiseConv2D(
            (s.kernel_size, s.kernel_size), (s.strides, s.strides),
            'VALID' if s.strides == 2 else 'SAME', impl=self.depthwise_impl, kernel_init=DW_INIT,
            name=p + 'depthwise')(x)),
        se + 'avg_pool': squeeze,
        se + 'conv': on('branch', lambda v: self.conv(se + 'conv', s.se_filters,
                                                      use_bias=True)(v)),
        se + 'relu': on('branch', ACTIVATIONS['relu']),
        se + 'conv_1': on('branch', lambda v: self.conv(se + 'conv_1', s.expanded,
                                                        use_bias=True)(v)),
        se + 'mul': excite,
        p + 'project': on('x', lambda x: self.conv(p + 'project', s.filters_out)(x)),
        p + 'add': add,
    }
    if s.has_skip:
      first = p + ('expand' if p != 'expanded_conv_' else 'depthwise')
      ops[first] = keep_input(ops[first])
    return ops
