"""Frozen Dropout as Keras runs it ('keras') or in inference mode ('off'), checked against Keras 3.

Keras 3 (the thesis's framework) switches only BatchNormalization to inference mode when a layer
has trainable=False: a frozen Dropout called with training=True still drops units.
"""

import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from tests.conftest import zero_kernels
from tljax import models
from tljax.models.small_cnn import BN_EPSILON
from tljax.training import prefix_cache

CASE_1_TRAINABLE = ('dense_1',)  # the thesis's case 1: every other layer frozen
RATES = {'dropout': 0.25, 'dropout_1': 0.25, 'dropout_2': 0.25, 'dropout_3': 0.5}


def _variables():
  model = models.create('small_cnn', 10)
  v = jax.tree.map(np.asarray, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
  rng = np.random.default_rng(0)  # moving statistics away from the init's 0 and 1
  for stats in v['batch_stats'].values():
    stats['mean'] = rng.normal(0, 0.1, stats['mean'].shape).astype(np.float32)
    stats['var'] = rng.uniform(0.5, 1.5, stats['var'].shape).astype(np.float32)
  return v


def _keras_layers(layers, variables):
  """The Keras model of `layers`, every layer's output an output."""
  inp = keras.Input((32, 32, 1))
  x, outs = inp, []
  for l in layers:
    if l.kind == 'Conv2D':
      k = variables['params'][l.name]['kernel']
      layer = keras.layers.Conv2D(k.shape[-1], 3, padding='same', activation='relu', name=l.name)
    elif l.kind == 'BatchNormalization':
      layer = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=l.name)
    elif l.kind == 'MaxPooling2D':
      layer = keras.layers.MaxPooling2D(2, name=l.name)
    elif l.kind == 'Dropout':
      layer = keras.layers.Dropout(RATES[l.name], name=l.name)
    elif l.kind == 'Flatten':
      layer = keras.layers.Flatten(name=l.name)
    else:
      k = variables['params'][l.name]['kernel']
      layer = keras.layers.Dense(k.shape[-1], activation='relu' if l.name == 'dense' else None,
                                 name=l.name)
    x = layer(x)
    outs.append(x)
  return keras.Model(inp, outs)


def _keras_small_cnn(variables):
  """The small CNN in Keras 3 with tljax's weights, every layer but dense_1 trainable=False.
  Outputs every layer's output (Keras order), so a test can read any layer."""
  layers = models.create('small_cnn', 10).keras_layers()
  with zero_kernels():  # set_weights sets every weight below
    km = _keras_layers(layers, variables)
  for l in layers:
    p, s = variables['params'].get(l.name), variables['batch_stats'].get(l.name)
    if s is not None:
      km.get_layer(l.name).set_weights([p['scale'], p['bias'], s['mean'], s['var']])
    elif p is not None:
      km.get_layer(l.name).set_weights([p['kernel'], p['bias']])
    km.get_layer(l.name).trainable = l.name in CASE_1_TRAINABLE
  return km, [l.name for l in layers]


def _tljax_layer_outputs(model, variables, x, rng):
  """Every top-level layer's output of a train-mode call (Dropout, BN and Dense modules)."""
  seen = {}

  def spy(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.name in RATES:
      seen[context.module.name] = (args[0], out)
    return out

  with nn.intercept_methods(spy):
    logits, _ = model.apply(variables, x, train=True, rngs={'dropout': rng},
                            mutable=['batch_stats'])
  return logits, seen


def _check_drops(inputs, outputs, rate):
  """outputs = inputs * mask / (1 - rate), mask ~ Bernoulli(1 - rate): units are dropped."""
  inputs, outputs = np.asarray(inputs), np.asarray(outputs)
  live = inputs != 0
  dropped = (outputs == 0) & live
  kept = np.isclose(outputs, inputs / (1 - rate), rtol=1e-5, atol=1e-6) & live
  assert np.all(dropped | kept | ~live)
  assert abs(dropped.sum() / live.sum() - rate) < 0.03, dropped.sum() / live.sum()


@pytest.fixture(scope='module')
def setup():
  variables = _variables()
  km, names = _keras_small_cnn(variables)
  x = np.random.default_rng(1).uniform(size=(16, 32, 32, 1)).astype(np.float32)
  return variables, km, names, x


def test_the_keras_port_matches_keras_in_inference(setup):
  variables, km, _, x = setup
  ours = models.create('small_cnn', 10).apply(variables, x, train=False)
  np.testing.assert_allclose(km(x, training=False)[-1], ours, rtol=1e-4, atol=1e-4)


def test_keras_frozen_dropout_drops_units_in_training_frozen_bn_does_not_train(setup):
  variables, km, names, x = setup
  assert not km.get_layer('dropout_3').trainable
  outs = dict(zip(names, km(x, training=True)))
  for d, rate in RATES.items():
    before = outs[names[names.index(d) - 1]]
    _check_drops(before, outs[d], rate)
  # Frozen BatchNormalization in Keras: inference mode (moving statistics), even in training.
  s, p = variables['batch_stats']['batch_normalization_6'], variables['params'][
      'batch_normalization_6']
  want = (np.asarray(outs['dense']) - s['mean']) / np.sqrt(s['var'] + BN_EPSILON) * p['scale'] + p[
      'bias']
  np.testing.assert_allclose(outs['batch_normalization_6'], want, rtol=1e-4, atol=1e-4)


def test_tljax_keras_mode_drops_in_frozen_layers_like_keras(setup):
  variables, _, names, x = setup
  frozen = frozenset(names) - set(CASE_1_TRAINABLE)
  model = models.create('small_cnn', 10, frozen=frozen, frozen_dropout='keras')
  y1, seen = _tljax_layer_outputs(model, variables, x, jax.random.key(1))
  y2, _ = _tljax_layer_outputs(model, variables, x, jax.random.key(2))
  for d, rate in RATES.items():
    _check_drops(*seen[d], rate)
  assert not np.allclose(y1, y2)
  # The prefix cache stops below the lowest active Dropout (index 5): conv2d .. max_pooling2d.
  assert prefix_cache.cut_index(model, CASE_1_TRAINABLE) == names.index('dropout') == 5


def test_tljax_off_mode_frozen_prefix_is_deterministic(setup):
  variables, km, names, x = setup
  frozen = frozenset(names) - set(CASE_1_TRAINABLE)
  model = models.create('small_cnn', 10, frozen=frozen, frozen_dropout='off')
  y1, seen = _tljax_layer_outputs(model, variables, x, jax.random.key(1))
  y2, _ = _tljax_layer_outputs(model, variables, x, jax.random.key(2))
  for d in RATES:
    np.testing.assert_array_equal(*seen[d])
  np.testing.assert_array_equal(y1, y2)
  # = Keras's guide: the frozen base called with training=False.
  np.testing.assert_allclose(y1, km(x, training=False)[-1], rtol=1e-4, atol=1e-4)
  assert prefix_cache.cut_index(model, CASE_1_TRAINABLE) == names.index('dense_1')
  with pytest.raises(ValueError, match=r"frozen_dropout='on': must be one of \('off', 'keras'\)"):
    models.active_dropout_layers(models.create('small_cnn', 10, frozen_dropout='on'))


def test_efficientnet_frozen_drop_connect_and_head_dropout():
  base = models.create('efficientnet_b0', num_classes=3)
  layers = base.keras_layers()
  names = [l.name for l in layers]
  drops = [i for i, l in enumerate(layers) if l.kind == 'Dropout']
  head_only = ('global_average_pooling2d', 'dense', 'batch_normalization', 'dropout', 'dense_1')
  frozen = frozenset(names) - set(head_only)
  keras_mode = base.clone(frozen=frozen, frozen_dropout='keras')
  off = base.clone(frozen=frozen, frozen_dropout='off')
  assert models.active_dropout_layers(keras_mode) == tuple(drops)
  assert models.active_dropout_layers(off) == (names.index('dropout'),)
  # 'keras': the cache stops at block2b, the first block with drop-connect; 'off': it caches the
  # pooled features.
  assert names[prefix_cache.cut_index(keras_mode, head_only)] == 'block2b_expand_conv'
  assert names[prefix_cache.cut_index(off, head_only)] == 'dense'
