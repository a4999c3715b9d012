"""What MobileNetV2, MobileNetV3 and ResNet50 share: Keras layers as ops over a carry."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.models.base import KerasLayer, blocks as layer_blocks, dropout_on, record_output
from tljax.models.efficientnet import correct_pad
from tljax.models.small_cnn import layer_range

# Keras's defaults: glorot-uniform kernels, zero biases.
KERNEL_INIT = nn.initializers.glorot_uniform()
# A depthwise kernel (kh, kw, 1, C) here is (kh, kw, C, 1) in Keras: fans over the swapped axes.
DW_INIT = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=-1, out_axis=-2)

# The tljax classification head on every base (as on EfficientNet): pooled features, a ReLU
# dense layer, BatchNorm, dropout, the classifier.
HEAD = (KerasLayer('global_average_pooling2d', 'GlobalAveragePooling2D', False, False, 'head'),
        KerasLayer('dense', 'Dense', True, False, 'head', activation='relu'),
        KerasLayer('batch_normalization', 'BatchNormalization', True, False, 'head'),
        KerasLayer('dropout', 'Dropout', False, False, 'head'),
        KerasLayer('dense_1', 'Dense', True, False, 'head'))


def relu6(x):
  return jnp.minimum(jnp.maximum(x, 0.0), 6.0)


def hard_sigmoid(x):
  """MobileNetV3's hard sigmoid: ReLU(6)(x + 3) * (1 / 6)."""
  return relu6(x + 3.0) * (1.0 / 6.0)


# Activation functions by KerasLayer.activation.
ACTIVATIONS = {'relu': nn.relu, 'relu6': relu6, 'hard_swish': jax.nn.hard_swish,
               'hard_sigmoid': hard_sigmoid}


def pad_for(kernel_size):
  """Keras's ZeroPadding2D(correct_pad(x, kernel_size)) for the static size of x."""
  def f(x):
    pads = correct_pad(x.shape[1:3], kernel_size)
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return f


def zero_pad(p):
  return lambda x: jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


# Ops map a carry {'x': the main path, 'skip': a residual block's input or shortcut, 'branch':
# the squeeze-excite vector, 'out': the op's Keras output} to the next carry.


def on(slot, f):
  """The op applying f to the carry's `slot`."""
  def op(c):
    y = f(c[slot])
    return {**c, slot: y, 'out': y}
  return op


def keep_input(op):
  """`op` as a residual block's first layer: the block's input is kept as 'skip'."""
  return lambda c: op({**c, 'skip': c['x']})


def add(c):
  y = c['x'] + c['skip']
  return {**c, 'x': y, 'skip': None, 'out': y}


def squeeze(c):
  """Squeeze-excite's GlobalAveragePooling2D(keepdims=True): the branch starts."""
  y = jnp.mean(c['x'], axis=(1, 2), keepdims=True)
  return {**c, 'branch': y, 'out': y}


def excite(c):
  y = c['x'] * c['branch']
  return {**c, 'x': y, 'branch': None, 'out': y}


def cut_points(layers) -> tuple[int, ...]:
  """Layer indices k where layers [0, k) and [k, end) meet in one tensor: not inside a residual
  block (its first layer .. its Add) nor a squeeze-excite branch (after its pooling .. its
  Multiply)."""
  bad, first, pool = set(), {}, None
  for i, l in enumerate(layers):
    first.setdefault(l.block, i)
    if l.kind == 'GlobalAveragePooling2D':
      pool = i
    if l.kind == 'Add':
      bad.update(range(first[l.block] + 1, i + 1))
    if l.kind == 'Multiply':
      bad.update(range(pool + 1, i + 1))
  return tuple(k for k in range(len(layers) + 1) if k not in bad)


class KerasGraph(nn.Module):
  """A keras.applications base (include_top=False) and the tljax head, in Flax.

  Subclasses give `base_layers()` (Keras's `model.layers`, InputLayer left out) and
  `_base_ops(train)` ({layer name: op}). num_classes=None: the output is the base's feature
  map; otherwise the head's logits. `frozen` names layers whose BatchNorm runs in inference
  mode even when `train=True`; a frozen Dropout follows `frozen_dropout` (models/base.py).
  """
  num_classes: Optional[int] = None
  frozen: frozenset = frozenset()
  head_dropout: float = 0.5
  head_units: int = 128
  bn_momentum: float = 0.99
  frozen_dropout: str = 'off'

  BN_EPSILON = 1e-3

  def base_layers(self) -> list[KerasLayer]:
    raise NotImplementedError

  def _base_ops(self, train) -> dict:
    raise NotImplementedError

  def keras_layers(self) -> tuple[KerasLayer, ...]:
    layers = list(self.base_layers())
    return tuple(layers + (list(HEAD) if self.num_classes is not None else []))

  def blocks(self) -> dict[str, tuple[str, ...]]:
    """{block name: its layer names}, in Keras order ('head' with num_classes)."""
    return layer_blocks(self.keras_layers())

  def cut_points(self) -> tuple[int, ...]:
    return cut_points(self.keras_layers())

  def bn(self, name, train):
    """Keras's BatchNormalization `name` (axis -1, the model's epsilon)."""
    return nn.BatchNorm(use_running_average=not (train and name not in self.frozen),
                        momentum=self.bn_momentum, epsilon=self.BN_EPSILON,
                        use_fast_variance=False, name=name)

  def conv(self, name, filters, kernel_size=1, strides=1, padding='SAME', use_bias=False):
    return nn.Conv(filters, (kernel_size, kernel_size), strides=(strides, strides),
                   padding=padding, use_bias=use_bias, kernel_init=KERNEL_INIT, name=name)

  def _head_ops(self, train):
    return {
        'global_average_pooling2d': on('x', lambda x: jnp.mean(x, axis=(1, 2))),
        'dense': on('x', lambda x: nn.relu(
            nn.Dense(self.head_units, kernel_init=KERNEL_INIT, name='dense')(x))),
        'batch_normalization': on('x', lambda x: self.bn('batch_normalization', train)(x)),
        'dropout': on('x', lambda x: nn.Dropout(
            self.head_dropout, deterministic=not dropout_on(self, 'dropout', train),
            name='dropout')(x)),
        'dense_1': on('x', lambda x: nn.Dense(self.num_classes, kernel_init=KERNEL_INIT,
                                              name='dense_1')(x).astype(jnp.float32)),
    }

  @nn.compact
  def __call__(self, x, train: bool = False, start=None, stop=None):
    """Layers [start, stop) (indices or Keras names, default all): x is layer start-1's output.

    A split must be one of `cut_points()`.
    """
    layers = self.keras_layers()
    lo, hi = layer_range(layers, start, stop, self.cut_points())
    ops = {**self._base_ops(train), **self._head_ops(train)}
    carry = {'x': x, 'skip': None, 'branch': None, 'out': x}
    for layer in layers[lo:hi]:
      carry = ops[layer.name](carry)
      record_output(self, layer.name, carry['out'])
    return carry['x']
