"""MobileNetV2, MobileNetV3 and ResNet50 against keras.applications: layers, variable counts,
features from converted random Keras weights, preprocessing and the analytic MAC count."""

import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import h5py  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import keras
from keras.src.legacy.saving import legacy_h5_format
import numpy as np
import pytest

from tests.conftest import zero_kernels
from tljax.accounting import costs
from tljax import convert
from tljax import models

# Keras's own variables trip a numpy 2 deprecation when written to HDF5; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

# tljax model -> keras.applications builder and the fields it passes on.
BUILDERS = {'mobilenet_v2': keras.applications.MobileNetV2,
            'mobilenet_v3_small': keras.applications.MobileNetV3Small,
            'mobilenet_v3_large': keras.applications.MobileNetV3Large,
            'resnet50': keras.applications.ResNet50}
# (model, fields): variables with include_top=False, BatchNorm statistics included (the issue's).
COUNTS = [('mobilenet_v2', {'alpha': 0.35}, 410_208), ('mobilenet_v2', {}, 2_257_984),
          ('mobilenet_v2', {'alpha': 1.4}, 4_363_712), ('mobilenet_v3_small', {}, 939_120),
          ('mobilenet_v3_small', {'minimalistic': True}, 441_000),
          ('mobilenet_v3_large', {}, 2_996_352),
          ('mobilenet_v3_large', {'minimalistic': True}, 1_437_608),
          ('resnet50', {}, 23_587_712)]
# (model, fields, input size) compared feature for feature: odd and even sizes, as small as 32;
# one per model runs by default, the others are marked slow.
_SLOW = pytest.mark.slow
FEATURES = [('mobilenet_v2', {'alpha': 0.35}, 57), ('mobilenet_v3_small', {}, 32),
            ('mobilenet_v3_large', {'minimalistic': True, 'alpha': 0.75}, 40),
            ('resnet50', {}, 32)] + [
                pytest.param(*p, marks=_SLOW) for p in (
                    ('mobilenet_v2', {'alpha': 0.35}, 32), ('mobilenet_v2', {'alpha': 0.35}, 96),
                    ('mobilenet_v2', {}, 64), ('mobilenet_v2', {'alpha': 1.4}, 41),
                    ('mobilenet_v3_small', {}, 75),
                    ('mobilenet_v3_small', {'minimalistic': True}, 49),
                    ('mobilenet_v3_large', {}, 64), ('mobilenet_v3_large', {}, 33),
                    ('resnet50', {}, 67))]


def _id(param):
  return '-'.join(f'{k}{v}' for k, v in param.items()) if isinstance(param, dict) else None


def build_keras(name, fields, size):
  """The Keras base (weights=None, include_top=False) in a fresh session (Keras's auto names)."""
  keras.backend.clear_session()
  with zero_kernels():
    return BUILDERS[name](include_top=False, weights=None, input_shape=(size, size, 3), **fields)


def keras_input(name, x):
  """What the Keras model takes for images x in [0, 255]: its preprocess_input's output."""
  module = {'mobilenet_v2': keras.applications.mobilenet_v2,
            'resnet50': keras.applications.resnet50}.get(name)
  return module.preprocess_input(x.copy()) if module else x


def randomize(model, rng, x):
  """Every weight random; BN moving statistics from a training-mode pass on x, then perturbed,
  so the random network neither explodes nor maps every input to one output."""
  for layer in model.layers:
    for w in layer.weights:
      leaf, shape = w.path.rsplit('/', 1)[-1], tuple(w.shape)
      if leaf == 'kernel':
        fan_in = np.prod(shape[:2]) if type(layer).__name__ == 'DepthwiseConv2D' else np.prod(
            shape[:-1])
        v = rng.normal(0, np.sqrt(1 / fan_in), shape)
      elif leaf in ('gamma', 'moving_variance'):
        v = rng.uniform(0.5, 1.5, shape)
      else:
        v = rng.normal(0, 0.1, shape)
      w.assign(np.asarray(v, np.float32))
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  for l in bns:
    l.momentum = 0.0
  step = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=True)[1])
  new = step([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables], x)
  for var, value in zip(model.non_trainable_variables, new):
    var.assign(value)
  for l in bns:
    std = np.sqrt(l.moving_variance.numpy())
    l.moving_mean.assign(l.moving_mean.numpy() + rng.normal(0, 0.1, std.shape) * std)
    l.moving_variance.assign(l.moving_variance.numpy() * rng.uniform(0.8, 1.25, std.shape))


def keras_features(km, x):
  """Keras's inference-mode output as one compiled program (eagerly, op by op, ~10 s more)."""
  call = jax.jit(lambda tv, ntv, x: km.stateless_call(tv, ntv, x, training=False)[0])
  return call([v.value for v in km.trainable_variables],
              [v.value for v in km.non_trainable_variables], x)


def _size(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name, fields, count', COUNTS, ids=lambda p: _id(p))
def test_layers_and_variable_counts_match_keras(name, fields, count):
  km = build_keras(name, fields, 64)
  assert km.count_params() == count
  model = models.create(name, **fields)
  want = [(l.name, type(l).__name__, bool(l.weights)) for l in km.layers[1:]]
  assert [(l.name, l.kind, l.weighted) for l in model.keras_layers()] == want
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert _size(shapes) == count
  assert set(shapes['params']) | set(shapes['batch_stats']) == {
      l.name for l in model.keras_layers() if l.weighted}


@pytest.mark.parametrize('name, fields, size', FEATURES, ids=lambda p: _id(p))
def test_features_match_keras_from_converted_weights(name, fields, size, tmp_path):
  rng = np.random.default_rng(size)
  km = build_keras(name, fields, size)
  calib = rng.uniform(0, 255, (16, size, size, 3)).astype(np.float32)
  randomize(km, rng, keras_input(name, calib))  # calibrated at the size compared
  path = str(tmp_path / 'weights.h5')
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, km)
  variables = convert.keras_h5_to_variables(path, name, **fields)
  x = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
  want = np.asarray(keras_features(km, keras_input(name, x)))
  got = np.asarray(jax.jit(models.create(name, **fields).apply)(
      variables, models.preprocess_input(name, x)))
  scale = np.abs(want).max()
  assert np.abs(want[0] - want[1]).max() > 0.1 * scale  # the features tell inputs apart
  err = np.abs(got - want).max() / scale
  print(f'{name} {fields} {size}x{size}: max rel err {err:.2e}')
  assert got.shape == want.shape and err < 1e-4


@pytest.mark.parametrize('name', ['mobilenet_v2', 'resnet50', 'mobilenet_v3_small'])
def test_preprocess_input_is_keras(name):
  x = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
  np.testing.assert_allclose(models.preprocess_input(name, x), keras_input(name, x), rtol=1e-6)
  assert models.pixel_scale(name) == 255.0


def _keras_macs(km):
  """Textbook MACs per example of every Conv2D / DepthwiseConv2D layer, from Keras's shapes."""
  out = {}
  for l in km.layers:
    kind = type(l).__name__
    if kind in ('Conv2D', 'DepthwiseConv2D'):
      kh, kw = l.kernel_size
      oh, ow, cout = l.output.shape[1:]
      cin = 1 if kind == 'DepthwiseConv2D' else l.input.shape[-1]
      out[l.name] = oh * ow * kh * kw * cin * cout
  return out


@pytest.mark.parametrize('name, fields', [('mobilenet_v2', {'alpha': 0.35}),
                                          ('mobilenet_v3_large', {}), ('resnet50', {})],
                         ids=lambda p: _id(p))
def test_analytic_macs_are_the_textbook_count(name, fields):
  km = build_keras(name, fields, 96)
  model = models.create(name, num_classes=7, **fields)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 96, 96, 3)))
  per_layer = costs.layer_macs(model, variables, (96, 96, 3))
  got = {l['name']: l['macs'] for l in per_layer if l['macs']}
  head = {'dense': 128 * km.output.shape[-1], 'dense_1': 128 * 7}
  assert got == {**_keras_macs(km), **head}
  zero = {l['kind'] for l in per_layer if not l['macs']}
  assert zero >= {'BatchNormalization', 'Add', 'GlobalAveragePooling2D'}


def test_the_step_benchmarks_edge_rows_time_the_same_cases_in_keras():
  from benchmarks import edge_step  # pylint: disable=g-import-not-at-top
  from benchmarks import keras_peers  # pylint: disable=g-import-not-at-top
  for spec in edge_step.specs(quick=True, which=('mobilenet_v2_0.35_128', 'resnet50_224')):
    keras.backend.clear_session()
    with zero_kernels():
      model, base_model = keras_peers.b0(keras, 5, 32, spec['model'], **spec['fields'])
    assert base_model.count_params() == {'mobilenet_v2': 410_208, 'resnet50': 23_587_712}[
        spec['model']]
    assert spec['n_base'] == len(base_model.layers) - 1 == spec['cases'][-1]
    assert model.output.shape[-1] == 5
    top = [l.name for l in base_model.layers[-spec['top']:]]
    assert top[0] == {'mobilenet_v2': 'Conv_1', 'resnet50': 'conv5_block3_1_conv'}[spec['model']]
