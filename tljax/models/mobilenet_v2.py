"""MobileNetV2 as a Flax module, layer for layer equal to keras.applications.MobileNetV2."""

import dataclasses

from tljax.models.base import KerasLayer
from tljax.models.efficientnet import DepthwiseConv2D
from tljax.models.keras_graph import (ACTIVATIONS, DW_INIT, KerasGraph, add, keep_input, on,
                                      pad_for)

BN_MOMENTUM = 0.999  # Keras's MobileNets

# keras.applications's _inverted_res_block calls: (expansion, filters, stride), block_id 0..16.
_BLOCKS = ((1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1),
           (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1),
           (6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1))


def make_divisible(v, divisor=8, min_value=None) -> int:
  """Keras's _make_divisible."""
  min_value = divisor if min_value is None else min_value
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return int(new_v)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One inverted-residual block as Keras builds it."""
  prefix: str  # 'expanded_conv_' for block 0, else 'block_{id}_'
  expanded: int  # channels after the expansion (the input's when block 0 expands nothing)
  filters_in: int
  filters_out: int
  strides: int

  @property
  def expands(self) -> bool:
    return self.prefix != 'expanded_conv_'

  @property
  def has_skip(self) -> bool:
    return self.strides == 1 and self.filters_in == self.filters_out


def block_specs(alpha: float) -> tuple[BlockSpec, ...]:
  channels = make_divisible(32 * alpha, 8)
  specs = []
  for i, (expansion, filters, strides) in enumerate(_BLOCKS):
    out = make_divisible(int(filters * alpha), 8)
    prefix = f'block_{i}_' if i else 'expanded_conv_'
    specs.append(BlockSpec(prefix, expansion * channels, channels, out, strides))
    channels = out
  return tuple(specs)


def last_filters(alpha: float) -> int:
  """Conv_1's filters: 1280, widened only when alpha > 1."""
  return make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280


def _block_layers(s: BlockSpec) -> list[KerasLayer]:
  p, block = s.prefix, s.prefix[:-1]
  out = []
  if s.expands:
    out += [KerasLayer(p + 'expand', 'Conv2D', True),
            KerasLayer(p + 'expand_BN', 'BatchNormalization', True),
            KerasLayer(p + 'expand_relu', 'ReLU', False, activation='relu6')]
  if s.strides == 2:
    out.append(KerasLayer(p + 'pad', 'ZeroPadding2D', False))
  out += [KerasLayer(p + 'depthwise', 'DepthwiseConv2D', True),
          KerasLayer(p + 'depthwise_BN', 'BatchNormalization', True),
          KerasLayer(p + 'depthwise_relu', 'ReLU', False, activation='relu6'),
          KerasLayer(p + 'project', 'Conv2D', True),
          KerasLayer(p + 'project_BN', 'BatchNormalization', True)]
  if s.has_skip:
    out.append(KerasLayer(p + 'add', 'Add', False))
  return [dataclasses.replace(l, block=block) for l in out]


def layer_list(alpha: float) -> list[KerasLayer]:
  """Keras's `model.layers` (include_top=False), InputLayer left out: blocks 'stem',
  'expanded_conv', 'block_1' .. 'block_16', 'top'."""
  layers = [KerasLayer('Conv1', 'Conv2D', True, block='stem'),
            KerasLayer('bn_Conv1', 'BatchNormalization', True, block='stem'),
            KerasLayer('Conv1_relu', 'ReLU', False, block='stem', activation='relu6')]
  for s in block_specs(alpha):
    layers += _block_layers(s)
  return layers + [KerasLayer('Conv_1', 'Conv2D', True, block='top'),
                   KerasLayer('Conv_1_bn', 'BatchNormalization', True, block='top'),
                   KerasLayer('out_relu', 'ReLU', False, block='top', activation='relu6')]


class MobileNetV2(KerasGraph):
  """keras.applications.MobileNetV2(alpha) in Flax.

  Input (N, H, W, 3) as Keras's mobilenet_v2.preprocess_input gives it: RGB in [-1, 1]
  (tljax's input pipeline applies it: models.preprocess_input). Stride-2 padding follows
  Keras's correct_pad for the static input size. Other fields: KerasGraph's.
  """
  alpha: float = 1.0
  depthwise_impl: str = 'auto'
  bn_momentum: float = BN_MOMENTUM

  def base_layers(self):
    return layer_list(self.alpha)

  def _base_ops(self, train):
    ops = {
        'Conv1': on('x', lambda x: self.conv('Conv1', make_divisible(32 * self.alpha, 8), 3,
                                             2)(x)),
        'Conv_1': on('x', lambda x: self.conv('Conv_1', last_filters(self.alpha))(x)),
    }
    for s in block_specs(self.alpha):
      ops.update(self._block_ops(s))
    for l in self.base_layers():
      if l.kind == 'BatchNormalization':
        ops[l.name] = on('x', self.bn(l.name, train))
      elif l.kind == 'ReLU':
        ops[l.name] = on('x', ACTIVATIONS[l.activation])
    return ops

  def _block_ops(self, s: BlockSpec):
    p = s.prefix
    ops = {
        p + 'expand': on('x', lambda x: self.conv(p + 'expand', s.expanded)(x)),
        p + 'pad': on('x', pad_for(3)),
        p + 'depthwise': on('x', lambda x: DepthwiseConv2D(
            (3, 3), (s.strides, s.strides), 'VALID' if s.strides == 2 else 'SAME',
            impl=self.depthwise_impl, kernel_init=DW_INIT, name=p + 'depthwise')(x)),
        p + 'project': on('x', lambda x: self.conv(p + 'project', s.filters_out)(x)),
        p + 'add': add,
    }
    if s.has_skip:
      first = p + ('expand' if s.expands else 'depthwise')
      ops[first] = keep_input(ops[first])
    return ops
