"""EfficientNetB0/B2 as Flax modules, layer for layer equal to keras.applications."""

import dataclasses
import math
from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from tljax.models.base import KerasLayer, blocks as layer_blocks, dropout_on, record_output
from tljax.models.small_cnn import layer_range

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
# Keras's backend.epsilon(), the floor of the Normalization layer's std.
NORM_EPSILON = 1e-7
# What the ImageNet weights file stores in normalization/mean and /variance
# (the variance slot holds the std; Keras divides by sqrt(std) once more).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# (width, depth) coefficients of keras.applications.EfficientNetB0 / B2.
VARIANTS = {'b0': (1.0, 1.0), 'b2': (1.1, 1.2)}

# keras.applications's DEFAULT_BLOCKS_ARGS: kernel, repeats, filters_in,
# filters_out, expand_ratio, strides (se_ratio 0.25 and id_skip everywhere).
_BLOCKS_ARGS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
_SE_RATIO = 0.25

# Keras's CONV_KERNEL_INITIALIZER; depthwise kernels (kh, kw, 1, C) here are
# (kh, kw, C, 1) in Keras, whose fan_out is kh*kw, hence the swapped axes.
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')
_DW_INIT = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'truncated_normal', in_axis=-1, out_axis=-2)
_DENSE_INIT = nn.initializers.glorot_uniform()


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One inverted-residual block as keras.applications builds it."""
  name: str  # prefix, e.g. 'block2a_'
  kernel_size: int
  filters_in: int
  filters_out: int
  expand_ratio: int
  strides: int
  drop_rate: float

  @property
  def filters(self) -> int:
    return self.filters_in * self.expand_ratio

  @property
  def se_filters(self) -> int:
    return max(1, int(self.filters_in * _SE_RATIO))

  @property
  def has_skip(self) -> bool:
    return self.strides == 1 and self.filters_in == self.filters_out


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Keras's round_filters."""
  filters *= width
  new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new_filters < 0.9 * filters:
    new_filters += divisor
  return int(new_filters)


def block_specs(variant: str, drop_connect_rate: float = 0.2) -> tuple[BlockSpec, ...]:
  """The blocks of EfficientNet`variant`, in Keras order."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown EfficientNet variant {variant!r}; known: {sorted(VARIANTS)}.')
  width, depth = VARIANTS[variant]
  repeats = [int(math.ceil(depth * args[1])) for args in _BLOCKS_ARGS]
  total = float(sum(repeats))
  specs, b = [], 0
  for i, (k, _, f_in, f_out, expand, strides) in enumerate(_BLOCKS_ARGS):
    f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
    for j in range(repeats[i]):
      if j > 0:
        strides, f_in = 1, f_out
      specs.append(BlockSpec(f'block{i + 1}{chr(j + 97)}_', k, f_in, f_out, expand,
                             strides, drop_connect_rate * b / total))
      b += 1
  return tuple(specs)


def correct_pad(size: Sequence[int], kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Keras's imagenet_utils.correct_pad for a known spatial `size` (h, w)."""
  adjust = (1 - size[0] % 2, 1 - size[1] % 2)
  c = kernel_size // 2
  return ((c - adjust[0], c), (c - adjust[1], c))


def _block_layers(s: BlockSpec) -> list[KerasLayer]:
  n = s.name
  out = []
  if s.expand_ratio != 1:
    out += [KerasLayer(n + 'expand_conv', 'Conv2D', True),
            KerasLayer(n + 'expand_bn', 'BatchNormalization', True),
            KerasLayer(n + 'expand_activation', 'Activation', False, activation='swish')]
  if s.strides == 2:
    out.append(KerasLayer(n + 'dwconv_pad', 'ZeroPadding2D', False))
  out += [KerasLayer(n + 'dwconv', 'DepthwiseConv2D', True),
          KerasLayer(n + 'bn', 'BatchNormalization', True),
          KerasLayer(n + 'activation', 'Activation', False, activation='swish'),
          KerasLayer(n + 'se_squeeze', 'GlobalAveragePooling2D', False),
          KerasLayer(n + 'se_reshape', 'Reshape', False),
          KerasLayer(n + 'se_reduce', 'Conv2D', True, activation='swish'),
          KerasLayer(n + 'se_expand', 'Conv2D', True, activation='sigmoid'),
          KerasLayer(n + 'se_excite', 'Multiply', False),
          KerasLayer(n + 'project_conv', 'Conv2D', True),
          KerasLayer(n + 'project_bn', 'BatchNormalization', True)]
  if s.has_skip:
    if s.drop_rate > 0:
      out.append(KerasLayer(n + 'drop', 'Dropout', False))
    out.append(KerasLayer(n + 'add', 'Add', False))
  return out


def layer_list(variant: str, num_classes: Optional[int],
               drop_connect_rate: float = 0.2) -> tuple[KerasLayer, ...]:
  """Keras's `model.layers` for the weights='imagenet' graph, InputLayer left out; blocks
  'stem' (rescaling .. stem_activation), 'block1a' .., 'top', and 'head' when num_classes is set."""
  stem = [KerasLayer('rescaling', 'Rescaling', False),
          KerasLayer('normalization', 'Normalization', True),
          KerasLayer('rescaling_1', 'Rescaling', False),
          KerasLayer('stem_conv_pad', 'ZeroPadding2D', False),
          KerasLayer('stem_conv', 'Conv2D', True),
          KerasLayer('stem_bn', 'BatchNormalization', True),
          KerasLayer('stem_activation', 'Activation', False, activation='swish')]
  layers = [dataclasses.replace(l, block='stem') for l in stem]
  for s in block_specs(variant, drop_connect_rate):
    layers += [dataclasses.replace(l, block=s.name[:-1]) for l in _block_layers(s)]
  layers += [KerasLayer('top_conv', 'Conv2D', True, block='top'),
             KerasLayer('top_bn', 'BatchNormalization', True, block='top'),
             KerasLayer('top_activation', 'Activation', False, block='top', activation='swish')]
  if num_classes is not None:
    layers += [KerasLayer('global_average_pooling2d', 'GlobalAveragePooling2D', False, False,
                          'head'),
               KerasLayer('dense', 'Dense', True, False, 'head', activation='relu'),
               KerasLayer('batch_normalization', 'BatchNormalization', True, False, 'head'),
               KerasLayer('dropout', 'Dropout', False, False, 'head'),
               KerasLayer('dense_1', 'Dense', True, False, 'head')]
  return tuple(layers)


Padding = Union[str, Sequence[tuple[int, int]]]


def _depthwise_slices(x, kernel, strides, pads):
  """Depthwise conv as a sum of kh*kw strided slices times per-channel weights."""
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  kh, kw = kernel.shape[:2]
  sh, sw = strides
  n, h, w, c = x.shape
  oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      patch = lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                        (1, sh, sw, 1))
      term = patch * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


DEPTHWISE_IMPLS = ('auto', 'slices', 'grouped')


def resolve_depthwise_impl(impl: str) -> str:
  """'slices' or 'grouped': 'auto' is 'slices' on XLA:CPU (several times faster there), else
  'grouped' (the native path on GPU/TPU)."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"DepthwiseConv2D impl must be 'auto', 'slices' or 'grouped', got {impl!r}.")
  if impl == 'auto':
    return 'slices' if jax.default_backend() == 'cpu' else 'grouped'
  return impl


class DepthwiseConv2D(nn.Module):
  """Keras DepthwiseConv2D (depth multiplier 1); 'kernel' is (kh, kw, 1, C).

  impl: 'grouped' = lax.conv_general_dilated with feature_group_count=C (fast
  on GPU/TPU), 'slices' = sum of shifted slices (fast on XLA:CPU), 'auto' =
  'slices' when JAX's default backend is the CPU, else 'grouped'.
  """
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = 'SAME'
  use_bias: bool = False
  impl: str = 'auto'
  kernel_init: nn.initializers.Initializer = _DW_INIT
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  def resolved_impl(self) -> str:
    return resolve_depthwise_impl(self.impl)

  def analytic_macs(self, in_shape, out_shape) -> int:
    """Multiply-accumulates per example: out_h * out_w * kh * kw * C."""
    del in_shape
    oh, ow, c = out_shape[-3:]
    return int(oh * ow * self.kernel_size[0] * self.kernel_size[1] * c)

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (*self.kernel_size, 1, c), jnp.float32)
    if isinstance(self.padding, str):
      pads = lax.padtype_to_pads(x.shape[1:3], self.kernel_size, self.strides, self.padding)
    else:
      pads = [tuple(p) for p in self.padding]
    kernel = kernel.astype(x.dtype)
    if self.resolved_impl() == 'slices':
      y = _depthwise_slices(x, kernel, self.strides, pads)
    else:
      y = lax.conv_general_dilated(x, kernel, self.strides, pads,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   feature_group_count=c)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (c,), jnp.float32).astype(y.dtype)
    return y


class Normalization(nn.Module):
  """Keras Normalization(axis=-1); mean/variance/count live in 'batch_stats'."""

  @nn.compact
  def __call__(self, x):
    mean = self.variable('batch_stats', 'mean', lambda: jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32))
    var = self.variable('batch_stats', 'variance',
                        lambda: jnp.asarray(IMAGENET_STDDEV_RGB, jnp.float32))
    self.variable('batch_stats', 'count', lambda: jnp.zeros((), jnp.float32))
    return (x - mean.value) / jnp.maximum(jnp.sqrt(var.value), NORM_EPSILON)


class EfficientNet(nn.Module):
  """keras.applications.EfficientNetB0/B2 (weights='imagenet' graph) in Flax.

  Input (N, H, W, 3) RGB floats in [0, 255]. num_classes=None: output is
  top_activation's feature map; otherwise the tljax head's logits. `frozen`
  names Keras layers whose BatchNorm runs in inference mode even when `train=True`;
  their Dropout (drop-connect, the head's dropout) drops units in training with
  frozen_dropout='keras' (as Keras does) and is off with 'off' (models/base.py).
  Stride-2 padding follows Keras's correct_pad for the static input size, as
  in a Keras model built with a known input_shape.
  """
  variant: str = 'b0'
  num_classes: Optional[int] = None
  frozen: frozenset = frozenset()
  drop_connect_rate: float = 0.2
  head_dropout: float = 0.5
  head_units: int = 128
  depthwise_impl: str = 'auto'
  bn_momentum: float = BN_MOMENTUM
  frozen_dropout: str = 'off'

  def keras_layers(self) -> tuple[KerasLayer, ...]:
    return layer_list(self.variant, self.num_classes, self.drop_connect_rate)

  def blocks(self) -> dict[str, tuple[str, ...]]:
    """{'stem', 'block1a', .., 'top', 'head' (with num_classes)}: their layer names."""
    return layer_blocks(self.keras_layers())

  def _train(self, name: str, train: bool) -> bool:
    return train and name not in self.frozen

  def _bn(self, name, x, train):
    return nn.BatchNorm(use_running_average=not self._train(name, train), momentum=self.bn_momentum,
                        epsilon=BN_EPSILON, use_fast_variance=False, name=name)(x)

  def _conv(self, name, x, filters, kernel_size=1, strides=1, use_bias=False):
    return nn.Conv(filters, (kernel_size, kernel_size), strides=(strides, strides),
                   padding='VALID' if strides > 1 else 'SAME', use_bias=use_bias,
                   kernel_init=_CONV_INIT, name=name)(x)

  def cut_points(self) -> tuple[int, ...]:
    """Layer indices k where layers [0, k) and [k, end) meet in one tensor.

    Not inside the squeeze-excite branch (se_reshape..se_excite), nor inside a block whose
    residual add spans the cut.
    """
    layers = self.keras_layers()
    bad = set()
    first = {}
    for i, l in enumerate(layers):
      if l.name.startswith('block'):
        block = l.name.split('_')[0]
        first.setdefault(block, i)
        op = l.name[len(block) + 1:]
        if op in ('se_reshape', 'se_reduce', 'se_expand', 'se_excite'):
          bad.add(i)
        if op == 'add':
          bad.update(range(first[block] + 1, i + 1))
    return tuple(k for k in range(len(layers) + 1) if k not in bad)

  def _layer_ops(self, train):
    """(Keras layer, fn) in Keras order; fn maps a carry {'x', 'inputs', 'se'} to the next."""
    width, _ = VARIANTS[self.variant]

    def on_x(f):
      return lambda c: {**c, 'x': f(c['x'])}

    def pad(k):
      def f(x):
        pads = correct_pad(x.shape[1:3], k)
        return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
      return f

    ops = {
        'rescaling': lambda x: jnp.asarray(x, jnp.float32) * jnp.float32(1.0 / 255.0),
        'normalization': lambda x: Normalization(name='normalization')(x),
        'rescaling_1': lambda x: x * jnp.asarray(
            [1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB], jnp.float32),
        'stem_conv_pad': pad(3),
        'stem_conv': lambda x: self._conv('stem_conv', x, round_filters(32, width), 3, 2),
        'stem_bn': lambda x: self._bn('stem_bn', x, train),
        'stem_activation': nn.silu,
        'top_conv': lambda x: self._conv('top_conv', x, round_filters(1280, width)),
        'top_bn': lambda x: self._bn('top_bn', x, train),
        'top_activation': nn.silu,
        'global_average_pooling2d': lambda x: jnp.mean(x, axis=(1, 2)),
        'dense': lambda x: nn.relu(
            nn.Dense(self.head_units, kernel_init=_DENSE_INIT, name='dense')(x)),
        'batch_normalization': lambda x: self._bn('batch_normalization', x, train),
        'dropout': lambda x: nn.Dropout(
            self.head_dropout, deterministic=not dropout_on(self, 'dropout', train),
            name='dropout')(x),
        'dense_1': lambda x: nn.Dense(self.num_classes, kernel_init=_DENSE_INIT,
                                      name='dense_1')(x).astype(jnp.float32),
    }
    ops = {k: on_x(f) for k, f in ops.items()}
    for s in block_specs(self.variant, self.drop_connect_rate):
      ops.update(self._block_ops(s, train, on_x, pad))
    return [(l, ops[l.name]) for l in self.keras_layers()]

  def _block_ops(self, s: BlockSpec, train, on_x, pad):
    n = s.name

    def se_excite(c):
      return {**c, 'x': c['x'] * c['se'], 'se': None}

    def on_se(f):
      return lambda c: {**c, 'se': f(c['se'])}

    ops = {
        n + 'expand_conv': on_x(lambda x: self._conv(n + 'expand_conv', x, s.filters)),
        n + 'expand_bn': on_x(lambda x: self._bn(n + 'expand_bn', x, train)),
        n + 'expand_activation': on_x(nn.silu),
        n + 'dwconv_pad': on_x(pad(s.kernel_size)),
        n + 'dwconv': on_x(lambda x: DepthwiseConv2D(
            (s.kernel_size, s.kernel_size), (s.strides, s.strides),
            'VALID' if s.strides == 2 else 'SAME', impl=self.depthwise_impl,
            name=n + 'dwconv')(x)),
        n + 'bn': on_x(lambda x: self._bn(n + 'bn', x, train)),
        n + 'activation': on_x(nn.silu),
        n + 'se_squeeze': lambda c: {**c, 'se': jnp.mean(c['x'], axis=(1, 2), keepdims=True)},
        n + 'se_reshape': lambda c: c,
        n + 'se_reduce': on_se(lambda se: nn.silu(
            self._conv(n + 'se_reduce', se, s.se_filters, use_bias=True))),
        n + 'se_expand': on_se(lambda se: nn.sigmoid(
            self._conv(n + 'se_expand', se, s.filters, use_bias=True))),
        n + 'se_excite': se_excite,
        n + 'project_conv': on_x(lambda x: self._conv(n + 'project_conv', x, s.filters_out)),
        n + 'project_bn': on_x(lambda x: self._bn(n + 'project_bn', x, train)),
        n + 'drop': on_x(lambda x: nn.Dropout(
            s.drop_rate, broadcast_dims=(1, 2, 3),
            deterministic=not dropout_on(self, n + 'drop', train), name=n + 'drop')(x)),
        n + 'add': lambda c: {**c, 'x': c['x'] + c['inputs'], 'inputs': None},
    }
    first = _block_layers(s)[0].name
    f0 = ops[first]
    ops[first] = lambda c: f0({**c, 'inputs': c['x']})
    return ops

  @nn.compact
  def __call__(self, x, train: bool = False, start=None, stop=None):
    """Layers [start, stop) (indices or Keras names, default all): x is layer start-1's output.

    A split must be one of `cut_points()`.
    """
    ops = self._layer_ops(train)
    lo, hi = layer_range([l for l, _ in ops], start, stop, self.cut_points())
    carry = {'x': x, 'inputs': None, 'se': None}
    for layer, f in ops[lo:hi]:
      carry = f(carry)  # the squeeze-excite layers' output is the 'se' branch
      record_output(self, layer.name, carry['x'] if carry['se'] is None else carry['se'])
    return carry['x']
