"""ResNet50 as a Flax module, layer for layer equal to keras.applications.ResNet50."""

import dataclasses

import flax.linen as nn

from tljax.models.base import KerasLayer
from tljax.models.keras_graph import KerasGraph, add, keep_input, on, zero_pad

# keras.applications.ResNet50's stack_fn: (stack name, bottleneck filters, blocks, first stride).
_STACKS = (('conv2', 64, 3, 1), ('conv3', 128, 4, 2), ('conv4', 256, 6, 2), ('conv5', 512, 3, 2))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One residual_block_v1: a 1x1, a 3x3 and a 1x1 convolution, a shortcut convolution in the
  first block of a stack."""
  name: str  # 'conv2_block1'
  filters: int
  strides: int
  shortcut_conv: bool


def block_specs() -> tuple[BlockSpec, ...]:
  return tuple(BlockSpec(f'{stack}_block{i}', filters, strides if i == 1 else 1, i == 1)
               for stack, filters, blocks, strides in _STACKS for i in range(1, blocks + 1))


def _block_layers(s: BlockSpec, block_input: str) -> list[KerasLayer]:
  """Keras 3's order: the shortcut branch's layers interleave with the last convolution's."""
  n = s.name + '_'
  out = [KerasLayer(n + '1_conv', 'Conv2D', True),
         KerasLayer(n + '1_bn', 'BatchNormalization', True),
         KerasLayer(n + '1_relu', 'Activation', False, activation='relu'),
         KerasLayer(n + '2_conv', 'Conv2D', True),
         KerasLayer(n + '2_bn', 'BatchNormalization', True),
         KerasLayer(n + '2_relu', 'Activation', False, activation='relu')]
  if s.shortcut_conv:
    out += [KerasLayer(n + '0_conv', 'Conv2D', True, inputs=(block_input,)),
            KerasLayer(n + '3_conv', 'Conv2D', True, inputs=(n + '2_relu',)),
            KerasLayer(n + '0_bn', 'BatchNormalization', True, inputs=(n + '0_conv',)),
            KerasLayer(n + '3_bn', 'BatchNormalization', True, inputs=(n + '3_conv',))]
  else:
    out += [KerasLayer(n + '3_conv', 'Conv2D', True),
            KerasLayer(n + '3_bn', 'BatchNormalization', True)]
  out += [KerasLayer(n + 'add', 'Add', False),
          KerasLayer(n + 'out', 'Activation', False, activation='relu')]
  return [dataclasses.replace(l, block=s.name) for l in out]


def layer_list() -> list[KerasLayer]:
  """Keras's `model.layers` (include_top=False), InputLayer left out: blocks 'stem' (conv1_pad
  .. pool1_pool), 'conv2_block1' .. 'conv5_block3'."""
  layers = [KerasLayer('conv1_pad', 'ZeroPadding2D', False),
            KerasLayer('conv1_conv', 'Conv2D', True),
            KerasLayer('conv1_bn', 'BatchNormalization', True),
            KerasLayer('conv1_relu', 'Activation', False, activation='relu'),
            KerasLayer('pool1_pad', 'ZeroPadding2D', False),
            KerasLayer('pool1_pool', 'MaxPooling2D', False)]
  layers = [dataclasses.replace(l, block='stem') for l in layers]
  for s in block_specs():
    layers += _block_layers(s, layers[-1].name)
  return layers


class ResNet50(KerasGraph):
  """keras.applications.ResNet50 in Flax.

  Input (N, H, W, 3) as Keras's resnet50.preprocess_input gives it ('caffe': BGR, ImageNet
  mean subtracted, not scaled; tljax's input pipeline applies it: models.preprocess_input).
  Other fields: KerasGraph's.
  """
  BN_EPSILON = 1.001e-5

  def base_layers(self):
    return layer_list()

  def _base_ops(self, train):
    ops = {
        'conv1_pad': on('x', zero_pad(3)),
        'conv1_conv': on('x', lambda x: self.conv('conv1_conv', 64, 7, 2, 'VALID', True)(x)),
        'pool1_pad': on('x', zero_pad(1)),
        'pool1_pool': on('x', lambda x: nn.max_pool(x, (3, 3), strides=(2, 2),
                                                    padding='VALID')),
    }
    for s in block_specs():
      ops.update(self._block_ops(s))
    for l in self.base_layers():
      if l.kind == 'BatchNormalization':
        slot = 'skip' if l.name.endswith('_0_bn') else 'x'
        ops[l.name] = on(slot, self.bn(l.name, train))
      elif l.kind == 'Activation':
        ops[l.name] = on('x', nn.relu)
    return ops

  def _block_ops(self, s: BlockSpec):
    n, f = s.name + '_', s.filters

    def conv(suffix, filters, kernel_size=1, strides=1, padding='VALID'):
      return lambda x: self.conv(n + suffix, filters, kernel_size, strides, padding, True)(x)

    ops = {
        n + '1_conv': keep_input(on('x', conv('1_conv', f, strides=s.strides))),
        n + '2_conv': on('x', conv('2_conv', f, 3, padding='SAME')),
        n + '0_conv': on('skip', conv('0_conv', 4 * f, strides=s.strides)),
        n + '3_conv': on('x', conv('3_conv', 4 * f)),
        n + 'add': add,
    }
    return ops
