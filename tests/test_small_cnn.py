"""The small CNN: parameter count, Keras layer list, frozen layers in inference mode."""

import jax
import jax.numpy as jnp
import numpy as np

from tljax import models

KERAS_ORDER = [
    ('conv2d', 'Conv2D'), ('batch_normalization', 'BatchNormalization'),
    ('conv2d_1', 'Conv2D'), ('batch_normalization_1', 'BatchNormalization'),
    ('max_pooling2d', 'MaxPooling2D'), ('dropout', 'Dropout'),
    ('conv2d_2', 'Conv2D'), ('batch_normalization_2', 'BatchNormalization'),
    ('conv2d_3', 'Conv2D'), ('batch_normalization_3', 'BatchNormalization'),
    ('max_pooling2d_1', 'MaxPooling2D'), ('dropout_1', 'Dropout'),
    ('conv2d_4', 'Conv2D'), ('batch_normalization_4', 'BatchNormalization'),
    ('conv2d_5', 'Conv2D'), ('batch_normalization_5', 'BatchNormalization'),
    ('max_pooling2d_2', 'MaxPooling2D'), ('dropout_2', 'Dropout'),
    ('flatten', 'Flatten'), ('dense', 'Dense'),
    ('batch_normalization_6', 'BatchNormalization'), ('dropout_3', 'Dropout'),
    ('dense_1', 'Dense'),
]


def _init(model):
  return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_parameter_count_matches_the_thesis():
  v = _init(models.create('small_cnn', 10))
  assert sum(x.size for x in jax.tree.leaves(v)) == 552_298
  assert sum(x.size for x in jax.tree.leaves(v['params'])) == 552_298 - 2 * (32 + 32 + 64 + 64 + 128 + 128 + 128)
  v100 = _init(models.create('small_cnn', 100))
  assert sum(x.size for x in jax.tree.leaves(v100)) == 552_298 + 90 * 129


def test_layers_in_keras_order_and_variables_named_after_them():
  model = models.create('small_cnn', 10)
  layers = model.keras_layers()
  assert [(l.name, l.kind) for l in layers] == KERAS_ORDER
  v = _init(model)
  weighted = {l.name for l in layers if l.weighted}
  assert set(v['params']) == weighted
  assert set(v['batch_stats']) == {l.name for l in layers if l.kind == 'BatchNormalization'}
  assert v['params']['conv2d_5']['kernel'].shape == (3, 3, 128, 128)
  assert v['params']['dense']['kernel'].shape == (2048, 128)


def test_frozen_layers_run_in_inference_mode():
  x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 1))
  model = models.create('small_cnn', 10)
  v = _init(model)
  names = {l.name for l in model.keras_layers()}
  all_frozen = models.create('small_cnn', 10, frozen=frozenset(names))
  out, new = all_frozen.apply(v, x, train=True, mutable=['batch_stats'],
                              rngs={'dropout': jax.random.key(2)})
  np.testing.assert_array_equal(out, model.apply(v, x, train=False))
  jax.tree.map(np.testing.assert_array_equal, new['batch_stats'], v['batch_stats'])
  # Trainable: batch statistics move and dropout is random.
  _, new = model.apply(v, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.key(2)})
  assert not np.array_equal(new['batch_stats']['batch_normalization']['mean'],
                            v['batch_stats']['batch_normalization']['mean'])


def test_max_pool_2x2_equals_flax_max_pool_in_value_and_gradient():
  from tljax.models.small_cnn import max_pool_2x2
  import flax.linen as nn
  for shape in [(4, 32, 32, 8), (2, 7, 9, 3)]:  # odd sizes: VALID drops the last row/column
    x = jax.random.normal(jax.random.key(0), shape)  # continuous: no ties in a window
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
    g = jax.random.normal(jax.random.key(1), ref(x).shape)
    np.testing.assert_array_equal(jax.vjp(max_pool_2x2, x)[1](g)[0], jax.vjp(ref, x)[1](g)[0])
