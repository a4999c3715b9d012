"""Freeze cases: the thesis's six cases as label trees, and out-of-range cases."""

import flax
import jax
import jax.numpy as jnp
import pytest

from tljax import models
from tljax.training import freezing

# Trainable layers with parameters per case (Figure 3.1 of the thesis).
EXPECTED = {
    1: {'dense_1'},
    4: {'dense_1', 'batch_normalization_6', 'dense'},
    9: {'dense_1', 'batch_normalization_6', 'dense', 'batch_normalization_5', 'conv2d_5'},
    11: {'dense_1', 'batch_normalization_6', 'dense', 'batch_normalization_5', 'conv2d_5',
         'batch_normalization_4', 'conv2d_4'},
    17: {'dense_1', 'batch_normalization_6', 'dense', 'batch_normalization_5', 'conv2d_5',
         'batch_normalization_4', 'conv2d_4', 'batch_normalization_3', 'conv2d_3',
         'batch_normalization_2', 'conv2d_2'},
}


@pytest.fixture(scope='module')
def small():
  model = models.create('small_cnn', 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))['params']
  return model.keras_layers(), params


@pytest.mark.parametrize('n', [1, 4, 9, 11, 17, 23])
def test_case_label_trees(small, n):
  layers, params = small
  names = freezing.case_layers(layers, n)
  assert len(names) == n
  assert names == tuple(l.name for l in layers[-n:])
  labels = freezing.label_tree(params, freezing.case_rules(names))
  flat = flax.traverse_util.flatten_dict(labels)
  trainable = {path[0] for path, lab in flat.items() if lab == freezing.TRAINABLE}
  expected = EXPECTED.get(n, set(params))
  assert trainable == expected
  # Every leaf of a layer gets its layer's label.
  for path, lab in flat.items():
    assert lab == (freezing.TRAINABLE if path[0] in expected else freezing.FROZEN)


@pytest.mark.parametrize('n', [0, 24, -1])
def test_out_of_range_case_names_the_layer_count(small, n):
  layers, _ = small
  with pytest.raises(ValueError, match=r'Case -?\d+ is out of range: the model has 23 layers'):
    freezing.case_layers(layers, n)


def test_base_counting_always_trains_the_head():
  from tljax.models.base import KerasLayer
  layers = (KerasLayer('a', 'Conv2D', True), KerasLayer('b', 'Activation', False),
            KerasLayer('head', 'Dense', True, base=False))
  assert freezing.case_layers(layers, 0, 'base') == ('head',)
  assert freezing.case_layers(layers, 1, 'base') == ('b', 'head')
  with pytest.raises(ValueError, match='the base model has 2 layers'):
    freezing.case_layers(layers, 3, 'base')


def test_uncovered_parameter_is_an_error(small):
  _, params = small
  with pytest.raises(ValueError, match=r"Parameter 'conv2d/(bias|kernel)' is matched by no freeze rule"):
    freezing.label_tree(params, [('dense.*', 'trainable')])


def test_rules_match_in_order_with_fullmatch(small):
  _, params = small
  labels = freezing.label_tree(params, [('conv2d/kernel', 'trainable'), ('conv2d.*', 'frozen'),
                                        ('.*', 'trainable')])
  assert labels['conv2d']['kernel'] == 'trainable'
  assert labels['conv2d']['bias'] == 'frozen'
  assert labels['conv2d_1']['kernel'] == 'frozen'  # 'conv2d.*' fullmatches 'conv2d_1/kernel'
  assert labels['dense']['kernel'] == 'trainable'
