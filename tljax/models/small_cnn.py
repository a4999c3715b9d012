"""The thesis's small CNN (Figure 2.3): 6 convolutions, 2 dense layers, 23 Keras layers."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.models.base import KerasLayer, blocks as layer_blocks, dropout_on, record_output

# Keras defaults mirrored: glorot-uniform kernels, zero biases, BN eps 1e-3, momentum 0.99.
_KERNEL_INIT = nn.initializers.glorot_uniform()
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99


def _layer_list(num_classes: int) -> tuple[KerasLayer, ...]:
  """The 23 layers in Keras order, with Keras's automatic names."""
  del num_classes
  layers = []
  n_conv = n_bn = n_pool = n_drop = 0
  for b in range(3):
    block = f'block{b + 1}'
    for _ in range(2):
      layers.append(KerasLayer(f'conv2d{_suffix(n_conv)}', 'Conv2D', True, block=block,
                               activation='relu'))
      layers.append(KerasLayer(f'batch_normalization{_suffix(n_bn)}', 'BatchNormalization', True,
                               block=block))
      n_conv += 1
      n_bn += 1
    layers.append(KerasLayer(f'max_pooling2d{_suffix(n_pool)}', 'MaxPooling2D', False,
                             block=block))
    layers.append(KerasLayer(f'dropout{_suffix(n_drop)}', 'Dropout', False, block=block))
    n_pool += 1
    n_drop += 1
  layers += [
      KerasLayer('flatten', 'Flatten', False, block='head'),
      KerasLayer('dense', 'Dense', True, block='head', activation='relu'),
      KerasLayer(f'batch_normalization{_suffix(n_bn)}', 'BatchNormalization', True,
                 block='head'),
      KerasLayer(f'dropout{_suffix(n_drop)}', 'Dropout', False, block='head'),
      KerasLayer('dense_1', 'Dense', True, block='head'),
  ]
  return tuple(layers)


def _suffix(i: int) -> str:
  return '' if i == 0 else f'_{i}'


class SmallCNN(nn.Module):
  """Input (N, 32, 32, 1) in [0, 1]; output logits (N, num_classes).

  `frozen` names layers that run in inference mode even when `train=True`
  (Keras `trainable=False`): their BatchNorm uses and keeps its moving
  statistics. Their Dropout drops units in training with frozen_dropout='keras'
  (as Keras does) and is off with 'off' (models/base.py).
  """
  num_classes: int = 10
  filters: Sequence[int] = (32, 64, 128)
  conv_dropout: float = 0.25
  dense_dropout: float = 0.5
  bn_momentum: float = BN_MOMENTUM
  frozen: frozenset = frozenset()
  frozen_dropout: str = 'off'

  def keras_layers(self) -> tuple[KerasLayer, ...]:
    return _layer_list(self.num_classes)

  def blocks(self) -> dict[str, tuple[str, ...]]:
    """{'block1', 'block2', 'block3' (conv, bn, conv, bn, pool, dropout), 'head'}: layer names."""
    return layer_blocks(self.keras_layers())

  def _train(self, name: str, train: bool) -> bool:
    return train and name not in self.frozen

  def _bn(self, name, x, train):
    return nn.BatchNorm(use_running_average=not self._train(name, train),
                        momentum=self.bn_momentum, epsilon=BN_EPSILON, name=name)(x)

  def _dropout(self, name, rate, x, train):
    return nn.Dropout(rate, deterministic=not dropout_on(self, name, train), name=name)(x)

  def cut_points(self) -> tuple[int, ...]:
    """Layer indices k where layers [0, k) and [k, end) meet in one tensor: all of them."""
    return tuple(range(len(self.keras_layers()) + 1))

  def _apply_layer(self, layer, x, train):
    name, kind = layer.name, layer.kind
    if kind == 'Conv2D':
      f = self.filters[(int(name.split('_')[1]) if '_' in name else 0) // 2]
      return nn.relu(nn.Conv(f, (3, 3), padding='SAME', kernel_init=_KERNEL_INIT, name=name)(x))
    if kind == 'BatchNormalization':
      return self._bn(name, x, train)
    if kind == 'MaxPooling2D':
      return max_pool_2x2(x)
    if kind == 'Dropout':
      rate = self.dense_dropout if x.ndim == 2 else self.conv_dropout
      return self._dropout(name, rate, x, train)
    if kind == 'Flatten':
      return x.reshape((x.shape[0], -1))
    if name == 'dense':
      return nn.relu(nn.Dense(128, kernel_init=_KERNEL_INIT, name=name)(x))
    return nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT, name=name)(x).astype(jnp.float32)

  @nn.compact
  def __call__(self, x, train: bool = False, start=None, stop=None):
    """Layers [start, stop) (indices or Keras names, default all): x is layer start-1's output."""
    layers = self.keras_layers()
    lo, hi = layer_range(layers, start, stop, self.cut_points())
    for layer in layers[lo:hi]:
      x = self._apply_layer(layer, x, train)
      record_output(self, layer.name, x)
    return x


def max_pool_2x2(x):
  """Keras MaxPooling2D(2) (VALID, stride 2) on NHWC as a reshape and a max.

  Equal to `nn.max_pool(x, (2, 2), strides=(2, 2))` in value. Its gradient is an
  elementwise mask where XLA:CPU expands max_pool's select-and-scatter into four index
  iotas, a variadic reduce-window and a scatter: ~20% of the full small-CNN step's busy time. With ties
  in a window the gradient is shared between them instead of given to the first.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:  # VALID drops the last odd row/column
    x = x[:, :h - h % 2, :w - w % 2]
    h, w = h - h % 2, w - w % 2
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def layer_range(layers, start, stop, cuts) -> tuple[int, int]:
  """(lo, hi) indices of `start`/`stop` (int, Keras layer name or None), checked against `cuts`."""
  names = [l.name for l in layers]

  def index(ref, default):
    if ref is None:
      return default
    if isinstance(ref, str):
      if ref not in names:
        raise ValueError(f'No layer named {ref!r}.')
      return names.index(ref)
    return int(ref)

  lo, hi = index(start, 0), index(stop, len(layers))
  for k in (lo, hi):
    if k not in cuts:
      raise ValueError(f'Cannot split the model before layer {k} '
                       f'({names[k] if 0 <= k < len(names) else "end"}): more than one tensor '
                       'crosses there.')
  if lo > hi:
    raise ValueError(f'start={start!r} comes after stop={stop!r}.')
  return lo, hi
