"""Tests of the EfficientNet port: Keras layers and counts, correct_pad, depthwise conv, freezing."""

import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import keras
from keras.src.applications import efficientnet as keras_efficientnet
from keras.src.applications import imagenet_utils
from keras.src.initializers import random_initializers
from keras.src.utils import file_utils
import numpy as np
import pytest

from tljax import models
from tljax.models.efficientnet import DepthwiseConv2D, EfficientNet, block_specs, correct_pad

# (trainable params, non-trainable variables, len(model.layers) with the InputLayer), base only.
EXPECTED = {'efficientnet_b0': (4_007_548, 42_023, 238), 'efficientnet_b2': (7_700_994, 67_575, 340)}
KERAS_BUILDERS = {'efficientnet_b0': keras_efficientnet.EfficientNetB0,
                  'efficientnet_b2': keras_efficientnet.EfficientNetB2}


def _size(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(model, size=224):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))


@pytest.fixture(scope='module')
def keras_models():
  """keras.applications's weights='imagenet' graphs (with the extra Rescaling), fetching nothing."""
  out = {}
  for name, builder in KERAS_BUILDERS.items():
    keras.backend.clear_session()
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(random_initializers.VarianceScaling, '__call__',
                 lambda self, shape, dtype=None: np.zeros(shape, dtype or 'float32'))
      mp.setattr(file_utils, 'get_file', lambda *a, **k: '/nonexistent/weights.h5')
      mp.setattr(keras.Model, 'load_weights', lambda self, *a, **k: None)
      out[name] = builder(include_top=False, weights='imagenet')
  return out


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_parameter_counts_match_keras(keras_models, name):
  trainable, non_trainable, _ = EXPECTED[name]
  km = keras_models[name]
  assert sum(int(np.prod(w.shape)) for w in km.trainable_weights) == trainable
  assert sum(int(np.prod(w.shape)) for w in km.non_trainable_weights) == non_trainable
  shapes = _shapes(models.create(name))
  assert set(shapes) == {'params', 'batch_stats'}
  assert _size(shapes['params']) == trainable
  assert _size(shapes['batch_stats']) == non_trainable
  norm = shapes['batch_stats']['normalization']
  assert {k: v.shape for k, v in norm.items()} == {'mean': (3,), 'variance': (3,), 'count': ()}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_layers_match_keras(keras_models, name):
  km = keras_models[name]
  assert type(km.layers[0]).__name__ == 'InputLayer'
  want = [(l.name, type(l).__name__, bool(l.weights)) for l in km.layers[1:]]
  layers = models.create(name).keras_layers()
  assert [(l.name, l.kind, l.weighted) for l in layers] == want
  assert len(layers) == EXPECTED[name][2] - 1
  assert all(l.base for l in layers)
  assert layers[-1].name == 'top_activation'


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_variables_are_keyed_by_keras_layer_names(keras_models, name):
  model = models.create(name, num_classes=10)
  shapes = _shapes(model, 64)
  layers = model.keras_layers()
  weighted = {l.name for l in layers if l.weighted}
  assert set(shapes['params']) | set(shapes['batch_stats']) == weighted
  head = [(l.name, l.kind) for l in layers if not l.base]
  assert head == [('global_average_pooling2d', 'GlobalAveragePooling2D'), ('dense', 'Dense'),
                  ('batch_normalization', 'BatchNormalization'), ('dropout', 'Dropout'),
                  ('dense_1', 'Dense')]
  width = shapes['params']['top_conv']['kernel'].shape[-1]
  assert shapes['params']['dense']['kernel'].shape == (width, 128)
  assert shapes['params']['dense_1']['kernel'].shape == (128, 10)
  # Every Keras weight shape has its counterpart (depthwise kernels transposed).
  km = keras_models[name]
  for kl in km.layers:
    for w in kl.weights:
      leaf = w.path.rsplit('/', 1)[-1]
      col, key = {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
                  'moving_mean': ('batch_stats', 'mean'), 'moving_variance': ('batch_stats', 'var'),
                  'mean': ('batch_stats', 'mean'), 'variance': ('batch_stats', 'variance'),
                  'count': ('batch_stats', 'count')}.get(leaf, ('params', leaf))
      shape = tuple(w.shape)
      if type(kl).__name__ == 'DepthwiseConv2D':
        shape = shape[:2] + shape[:1:-1]
      assert shapes[col][kl.name][key].shape == shape, (kl.name, leaf)


def test_registry_and_pixel_scale():
  for name, variant in (('efficientnet_b0', 'b0'), ('efficientnet_b2', 'b2')):
    model = models.create(name, num_classes=5)
    assert isinstance(model, EfficientNet) and model.variant == variant
    assert model.num_classes == 5
    assert models.default_input_shape(name) == (224, 224, 3)
    assert models.pixel_scale(name) == 255.0


@pytest.mark.parametrize('h,w', [(224, 224), (65, 65), (64, 65), (33, 32), (7, 8), (1, 2)])
@pytest.mark.parametrize('k', [3, 5])
def test_correct_pad_is_keras(h, w, k):
  assert correct_pad((h, w), k) == imagenet_utils.correct_pad(np.zeros((1, h, w, 3)), k)


@pytest.mark.parametrize('size,out', [(224, 7), (65, 3), (33, 2), (32, 1)])
def test_output_sizes(size, out):
  y = jax.eval_shape(lambda: models.create('efficientnet_b0').init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))[0])
  assert y.shape == (1, out, out, 1280)


@pytest.mark.parametrize('kernel,strides,padding,shape,use_bias', [
    (3, 1, 'SAME', (2, 9, 11, 8), False),
    (5, 1, 'SAME', (1, 8, 8, 4), True),
    (3, 2, 'VALID', (2, 10, 9, 6), False),
    (5, 2, 'SAME', (2, 11, 10, 3), False),
    (5, 2, ((1, 2), (2, 2)), (1, 13, 12, 5), True),
    (3, 2, 'SAME', (6, 9, 9, 4), False),  # the kernel gradient's chunks of 4: one of 2 left
])
def test_depthwise_impls_agree(kernel, strides, padding, shape, use_bias):
  rng = np.random.default_rng(kernel * 10 + strides)
  x = rng.normal(size=shape).astype(np.float32)
  mods = {impl: DepthwiseConv2D((kernel, kernel), (strides, strides), padding, use_bias, impl)
          for impl in ('slices', 'grouped')}
  shapes = jax.eval_shape(mods['grouped'].init, jax.random.PRNGKey(0), x)['params']
  assert {k: v.shape for k, v in shapes.items()} == (
      {'kernel': (kernel, kernel, 1, shape[-1])} | ({'bias': (shape[-1],)} if use_bias else {}))
  variables = {'params': {k: rng.normal(size=v.shape).astype(np.float32) for k, v in shapes.items()}}

  def loss(impl, v, x):
    return jnp.sum(jnp.sin(mods[impl].apply(v, x)))

  ys = {i: jax.jit(mods[i].apply)(variables, x) for i in mods}
  grads = {i: jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(i, variables, x)
           for i in mods}
  assert ys['slices'].shape == ys['grouped'].shape
  np.testing.assert_allclose(ys['slices'], ys['grouped'], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads['slices'], grads['grouped'])
  # Independent reference: Flax's own grouped convolution.
  ref = nn.Conv(shape[-1], (kernel, kernel), (strides, strides), padding,
                feature_group_count=shape[-1], use_bias=use_bias)
  np.testing.assert_allclose(jax.jit(ref.apply)(variables, x), ys['slices'], rtol=1e-5, atol=1e-5)
  out = ys['slices'].shape
  assert mods['slices'].analytic_macs(shape, out) == out[1] * out[2] * kernel * kernel * shape[-1]


def test_depthwise_impl_choice():
  auto = DepthwiseConv2D((3, 3))
  assert auto.resolved_impl() == ('slices' if jax.default_backend() == 'cpu' else 'grouped')
  assert DepthwiseConv2D((3, 3), impl='grouped').resolved_impl() == 'grouped'
  with pytest.raises(ValueError, match="'auto', 'slices' or 'grouped'"):
    DepthwiseConv2D((3, 3), impl='fft').resolved_impl()
  assert DepthwiseConv2D((5, 5), (2, 2)).analytic_macs((7, 14, 14, 240), (7, 7, 7, 240)) == (
      7 * 7 * 25 * 240)


def _train_apply(model):
  """Jitted train-mode forward returning logits, new batch_stats and block2b_drop's in/out."""
  def f(variables, x, rng):
    seen = {}

    def spy(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == 'block2b_drop':
        seen['in'], seen['out'] = args[0], out
      return out

    with nn.intercept_methods(spy):
      y, state = model.apply(variables, x, train=True, rngs={'dropout': rng},
                             mutable=['batch_stats'])
    return y, state['batch_stats'], seen
  return jax.jit(f)


def _changed(a, b):
  return {k for k in a if any(not np.array_equal(a[k][s], b[k][s]) for s in a[k])}


def test_frozen_layers_run_in_inference_mode():
  base = models.create('efficientnet_b0', num_classes=3)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3), maxval=255.0)
  # Random variables without model.init (whose RNG graph takes XLA:CPU ~20 s to compile).
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype),
                           _shapes(base, 32))
  variables['params'] = jax.tree.map(lambda p: p * rng.normal(0, 0.3, p.shape).astype(p.dtype),
                                     variables['params'])
  stats = variables['batch_stats']
  r1, r2 = jax.random.PRNGKey(2), jax.random.PRNGKey(3)
  layers = base.keras_layers()
  bns = {l.name for l in layers if l.kind == 'BatchNormalization'}
  drops = {l.name for l in layers if l.kind == 'Dropout'}
  assert 'block2b_drop' in drops and 'dropout' in drops

  # Nothing frozen: every BN updates its moving stats, dropout and drop-connect are random.
  train = _train_apply(base)
  y1, new1, _ = train(variables, x, r1)
  y2, _, _ = train(variables, x, r2)
  assert _changed(new1, stats) == bns
  assert not np.allclose(y1, y2)
  # Drop-connect drops whole examples (noise_shape (None, 1, 1, 1)) at block2b's rate 0.2*2/16.
  rate = {s.name + 'drop': s.drop_rate for s in block_specs('b0')}['block2b_drop']
  assert rate == pytest.approx(0.025)
  rows = np.concatenate([
      np.asarray(seen['out'] / seen['in']).reshape(4, -1)
      for seen in (train(variables, x, jax.random.PRNGKey(i))[2] for i in range(64))])
  dropped = np.all(rows == 0, axis=1)
  kept = np.all(np.isclose(rows, 1 / (1 - rate), rtol=1e-5), axis=1)
  assert np.all(dropped | kept) and dropped.any() and kept.any()

  # Some BN layers and every dropout frozen: those stats stay, the output ignores the rng.
  frozen_bns = {'stem_bn', 'block3a_bn', 'top_bn', 'batch_normalization'}
  train = _train_apply(base.clone(frozen=frozenset(frozen_bns | drops)))  # compiled once
  y1, new1, seen = train(variables, x, r1)
  y2, new2, _ = train(variables, x, r2)
  np.testing.assert_array_equal(y1, y2)
  np.testing.assert_array_equal(seen['out'], seen['in'])
  assert _changed(new1, stats) == bns - frozen_bns
  jax.tree.map(np.testing.assert_array_equal, new1, new2)

  # Everything frozen: train=True is inference.
  model = base.clone(frozen=frozenset(l.name for l in layers))
  y1, new1, _ = _train_apply(model)(variables, x, r1)
  jax.tree.map(np.testing.assert_array_equal, new1, stats)
  np.testing.assert_allclose(y1, jax.jit(base.apply)(variables, x), rtol=1e-6, atol=1e-6)
