"""The thesis's small CNN (Figure 2.3): 6 convolutions, 2 dense layers, 23 Keras layers."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.models.base import KerasLayer

# Keras defaults mirrored: glorot-uniform kernels, zero biases, BN eps 1e-3, momentum 0.99.
_KERNEL_INIT = nn.initializers.glorot_uniform()
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99


def _layer_list(num_classes: int) -> tuple[KerasLayer, ...]:
  """The 23 layers in Keras order, with Keras's automatic names."""
  del num_classes
  layers = []
  n_conv = n_bn = n_pool = n_drop = 0
  for _ in range(3):
    for _ in range(2):
      layers.append(KerasLayer(f'conv2d{_suffix(n_conv)}', 'Conv2D', True))
      layers.append(KerasLayer(f'batch_normalization{_suffix(n_bn)}', 'BatchNormalization', True))
      n_conv += 1
      n_bn += 1
    layers.append(KerasLayer(f'max_pooling2d{_suffix(n_pool)}', 'MaxPooling2D', False))
    layers.append(KerasLayer(f'dropout{_suffix(n_drop)}', 'Dropout', False))
    n_pool += 1
    n_drop += 1
  layers += [
      KerasLayer('flatten', 'Flatten', False),
      KerasLayer('dense', 'Dense', True),
      KerasLayer(f'batch_normalization{_suffix(n_bn)}', 'BatchNormalization', True),
      KerasLayer(f'dropout{_suffix(n_drop)}', 'Dropout', False),
      KerasLayer('dense_1', 'Dense', True),
  ]
  return tuple(layers)


def _suffix(i: int) -> str:
  return '' if i == 0 else f'_{i}'


class SmallCNN(nn.Module):
  """Input (N, 32, 32, 1) in [0, 1]; output logits (N, num_classes).

  `frozen` names layers that run in inference mode even when `train=True`
  (Keras `trainable=False`): their BatchNorm uses and keeps its moving
  statistics, their Dropout is off.
  """
  num_classes: int = 10
  filters: Sequence[int] = (32, 64, 128)
  conv_dropout: float = 0.25
  dense_dropout: float = 0.5
  bn_momentum: float = BN_MOMENTUM
  frozen: frozenset = frozenset()

  def keras_layers(self) -> tuple[KerasLayer, ...]:
    return _layer_list(self.num_classes)

  def _train(self, name: str, train: bool) -> bool:
    return train and name not in self.frozen

  def _bn(self, name, x, train):
    return nn.BatchNorm(use_running_average=not self._train(name, train),
                        momentum=self.bn_momentum, epsilon=BN_EPSILON, name=name)(x)

  def _dropout(self, name, rate, x, train):
    return nn.Dropout(rate, deterministic=not self._train(name, train), name=name)(x)

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers = iter(self.keras_layers())
    for f in self.filters:
      for _ in range(2):
        x = nn.Conv(f, (3, 3), padding='SAME', kernel_init=_KERNEL_INIT,
                    name=next(layers).name)(x)
        x = nn.relu(x)
        x = self._bn(next(layers).name, x, train)
      next(layers)  # max_pooling2d*
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = self._dropout(next(layers).name, self.conv_dropout, x, train)
    next(layers)  # flatten
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(128, kernel_init=_KERNEL_INIT, name=next(layers).name)(x)
    x = nn.relu(x)
    x = self._bn(next(layers).name, x, train)
    x = self._dropout(next(layers).name, self.dense_dropout, x, train)
    x = nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT, name=next(layers).name)(x)
    return x.astype(jnp.float32)
