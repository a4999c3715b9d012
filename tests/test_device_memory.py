"""The device memory model against hand-worked bytes, and its cross-check with XLA."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from tljax.accounting import device_memory
from tljax import models
from tljax.models.small_cnn import SmallCNN
from tljax.training import case as case_lib
from tljax.training import compiled

# Small CNN, 10 classes, batch 1: each layer's output elements and parameters (kernel + bias).
OUT = {'conv2d': 32 * 32 * 32, 'conv2d_1': 32 * 32 * 32, 'max_pooling2d': 16 * 16 * 32,
       'conv2d_2': 16 * 16 * 64, 'conv2d_3': 16 * 16 * 64, 'max_pooling2d_1': 8 * 8 * 64,
       'conv2d_4': 8 * 8 * 128, 'conv2d_5': 8 * 8 * 128, 'max_pooling2d_2': 4 * 4 * 128,
       'dense': 128, 'dense_1': 10}
CONV_IN = {'conv2d': 32 * 32 * 1, 'conv2d_1': OUT['conv2d'], 'conv2d_2': OUT['max_pooling2d'],
           'conv2d_3': OUT['conv2d_2'], 'conv2d_4': OUT['max_pooling2d_1'],
           'conv2d_5': OUT['conv2d_4'], 'dense': 2048, 'dense_1': 128}
BIASES = {'conv2d': 32, 'conv2d_1': 32, 'conv2d_2': 64, 'conv2d_3': 64, 'conv2d_4': 128,
          'conv2d_5': 128, 'dense': 128, 'dense_1': 10}
PARAMS = 552_298 - 2 * 576  # every parameter: the model's total less BN's moving mean/variance
STATS_BYTES = 4 * 2 * 576  # seven BatchNorms, 576 channels in all
# BatchNorm name -> its input (= output) elements.
BN = {'batch_normalization': OUT['conv2d'], 'batch_normalization_1': OUT['conv2d_1'],
      'batch_normalization_2': OUT['conv2d_2'], 'batch_normalization_3': OUT['conv2d_3'],
      'batch_normalization_4': OUT['conv2d_4'], 'batch_normalization_5': OUT['conv2d_5'],
      'batch_normalization_6': OUT['dense']}
POOL_MASK = {p: OUT[p] * 2 // 8 for p in ('max_pooling2d', 'max_pooling2d_1', 'max_pooling2d_2')}
RELU = ('conv2d', 'conv2d_1', 'conv2d_2', 'conv2d_3', 'conv2d_4', 'conv2d_5', 'dense')


@pytest.fixture(scope='module')
def cnn():
  model = models.create('small_cnn', 10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
  return model, variables


def _memory(cnn, trainable, active, **kw):
  model, variables = cnn
  return device_memory.device_train_memory(model, variables, trainable, active, (32, 32, 1), **kw)


def _kept(result):
  return {r['name']: r['kept_bytes'] for r in result['layers'] if r['kept_bytes']}


def _total(r):
  return (r['weights_bytes'] + r['layer_gradient_bytes'] + r['optimizer_bytes']
          + r['activation_bytes'] + r['largest_temp_bytes'])


def test_head_only_keeps_only_dense_1s_input(cnn):
  r = _memory(cnn, {'dense_1': ('kernel', 'bias')}, ['dense_1'])
  assert _kept(r) == {'dense_1': 128 * 4} and r['activation_bytes'] == 512
  head = 128 * 10 + 10
  assert r['trainable_weights_bytes'] == 4 * head == r['gradient_bytes']
  assert r['layer_gradient_bytes'] == 4 * head
  assert r['frozen_weights_bytes'] == 4 * (PARAMS - head)
  assert r['batch_stats_bytes'] == STATS_BYTES
  assert r['weights_bytes'] == 4 * PARAMS + STATS_BYTES
  assert r['optimizer_bytes'] == 2 * 4 * head
  assert r['largest_temp_bytes'] == 4 * 32 * 32 * 32  # conv2d's output
  assert r['total_bytes'] == _total(r) and len(r['layers']) == 23
  assert r['layers'][0]['output_shape'] == [1, 32, 32, 32]


def test_full_model_keeps_what_each_backward_needs(cnn):
  model, variables = cnn
  names = [l.name for l in model.keras_layers()]
  trainable = {k: tuple(v) for k, v in variables['params'].items()}
  r = _memory(cnn, trainable, names)
  expected = {c: 4 * CONV_IN[c] for c in CONV_IN}  # every kernel trains: its input
  for c in RELU:
    expected[c] += OUT[c] // 8  # + the fused relu's 1-bit mask
  expected.update({b: 4 * n for b, n in BN.items()}, **POOL_MASK)
  expected.update(dropout=OUT['max_pooling2d'] // 8, dropout_1=OUT['max_pooling2d_1'] // 8,
                  dropout_2=OUT['max_pooling2d_2'] // 8, dropout_3=128 // 8)
  assert _kept(r) == expected
  assert r['activation_bytes'] == sum(expected.values()) == 770_336
  assert r['trainable_weights_bytes'] == 4 * PARAMS and r['frozen_weights_bytes'] == 0
  assert r['layer_gradient_bytes'] == 4 * (2048 * 128 + 128)  # dense, the largest layer
  assert r['optimizer_bytes'] == 8 * PARAMS and r['total_bytes'] == _total(r)


def test_bias_only_keeps_no_conv_input_but_training_bn_inputs(cnn):
  model, _ = cnn
  bns = [l.name for l in model.keras_layers() if l.kind == 'BatchNormalization']
  r = _memory(cnn, {c: ('bias',) for c in BIASES}, bns)
  expected = {c: OUT[c] // 8 for c in RELU}  # relu masks only; dense_1 keeps nothing
  expected.update({b: 4 * n for b, n in BN.items()}, **POOL_MASK)  # dropout: inference mode
  assert _kept(r) == expected
  assert r['trainable_weights_bytes'] == 4 * sum(BIASES.values())
  assert r['layer_gradient_bytes'] == 4 * 128


def test_int8_frozen_weights_are_a_quarter(cnn):
  trainable = {'dense_1': ('kernel', 'bias')}
  f32 = _memory(cnn, trainable, ['dense_1'])
  f16 = _memory(cnn, trainable, ['dense_1'], frozen_dtype='float16')
  i8 = _memory(cnn, trainable, ['dense_1'], frozen_dtype='int8', batch_size=4)
  frozen = f32['frozen_weights_bytes']
  assert frozen == 2 * f16['frozen_weights_bytes'] == 4 * i8['frozen_weights_bytes']
  assert i8['trainable_weights_bytes'] == f32['trainable_weights_bytes']
  assert i8['activation_bytes'] == 4 * f32['activation_bytes'] and i8['batch_size'] == 4
  assert f32['total_bytes'] - i8['total_bytes'] == (
      3 * i8['frozen_weights_bytes'] - 3 * f32['activation_bytes'] - 3 * f32['largest_temp_bytes'])


class _OddCNN(SmallCNN):
  def keras_layers(self):
    layers = list(super().keras_layers())
    layers[-1] = dataclasses.replace(layers[-1], kind='EinsumDense')
    return tuple(layers)


def test_bad_input_raises_naming_it(cnn):
  _, variables = cnn
  with pytest.raises(ValueError, match="'EinsumDense'.*known kinds"):
    device_memory.device_train_memory(_OddCNN(num_classes=10), variables, {}, [], (32, 32, 1))
  with pytest.raises(ValueError, match="frozen_dtype='int4'"):
    _memory(cnn, {}, [], frozen_dtype='int4')
  with pytest.raises(ValueError, match="'gamma'.*'dense_1'"):
    _memory(cnn, {'dense_1': ('gamma',)}, [])
  with pytest.raises(ValueError, match='batch_size=0'):
    _memory(cnn, {}, [], batch_size=0)


def test_efficientnet_b0_every_kind_known():
  model = models.create('efficientnet_b0', 10, frozen_dropout='keras')
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  head = ['global_average_pooling2d', 'dense', 'batch_normalization', 'dropout', 'dense_1']
  r = device_memory.device_train_memory(
      model, variables, {'dense': ('kernel', 'bias'), 'batch_normalization': ('scale', 'bias'),
                         'dense_1': ('kernel', 'bias')}, head, (32, 32, 3))
  # B0's 4,049,571 variables + head: dense 1280x128 + 128, BN 4 x 128, dense_1 128x10 + 10.
  assert r['weights_bytes'] == 4 * (4_049_571 + 1280 * 128 + 128 + 4 * 128 + 128 * 10 + 10)
  assert len(r['layers']) == 237 + 5
  # dense: input + relu mask; BN (training mode): input; dropout: mask; dense_1: input.
  assert _kept(r) == {'dense': 4 * 1280 + 16, 'batch_normalization': 4 * 128, 'dropout': 16,
                      'dense_1': 4 * 128}
  everything = {k: tuple(v) for k, v in variables['params'].items()}
  full = device_memory.device_train_memory(
      model, variables, everything, [l.name for l in model.keras_layers()], (32, 32, 3))
  kept, rows = _kept(full), {x['name']: x for x in full['layers']}
  assert kept['block7a_se_excite'] == 4 * (1 * 1 * 1152 + 1152)  # x (1x1 at 32) + excitation
  assert kept['top_activation'] == 4 * 1280 and rows['block2b_add']['kept_bytes'] == 0
  assert kept['block2b_drop'] == 1  # drop-connect: one bit per example
  assert rows['stem_conv_pad']['kept_bytes'] == 0  # below stem_conv, the lowest trainable


@pytest.fixture(scope='module')
def head_case():
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  return config, case_lib.make_case(config, 1, num_classes=10)


def test_case_inputs_and_xla_cross_check_at_batch_1(head_case):
  config, case = head_case
  trainable, active = device_memory.case_inputs(case)
  assert {k: set(v) for k, v in trainable.items()} == {'dense_1': {'kernel', 'bias'}}
  assert active == ('dense_1',)
  model = device_memory.case_device_memory(case, config)
  assert model['activation_bytes'] == 4 * 128 and model['batch_size'] == 1
  step = compiled.compile_train(case.model, case.tx, case.trainable, case.state, config, 1)
  xla = device_memory.xla_cross_check(step.cost, 1, model)
  assert xla['batch_size'] == 1 and xla['model_total_bytes'] == model['total_bytes']
  # XLA's arguments hold the whole train state: every weight and statistic, Adam's two slots.
  assert xla['argument_bytes'] >= model['weights_bytes'] + model['optimizer_bytes']
  assert xla['device_to_xla_memory'] == pytest.approx(model['total_bytes'] / xla['memory_bytes'])
  assert 0 < xla['device_to_xla_memory'] < 1.5


def test_frozen_statistics_bias_case_keeps_no_input_for_a_weight_gradient(head_case):
  """bias:23 as the sweep makes it (TinyTL-B): no layer keeps its input for a weight gradient
  (a bias gradient needs only the output gradient) and no BatchNorm keeps its input (inference
  mode: its backward pass is a scale); bias_batchstats:23 keeps every BatchNorm's input."""
  config, _ = head_case
  rows = {}
  for name in ('bias:23', 'bias_batchstats:23'):
    case = case_lib.make_case(config, name, num_classes=10)
    rows[name] = device_memory.case_device_memory(case, config)
  expected = {c: OUT[c] // 8 for c in RELU}  # the fused relus' masks, no conv or dense input
  expected.update(POOL_MASK, dropout=OUT['max_pooling2d'] // 8,
                  dropout_1=OUT['max_pooling2d_1'] // 8, dropout_2=OUT['max_pooling2d_2'] // 8,
                  dropout_3=128 // 8, dense_1=4 * 128)  # the head's kernel trains: its input
  assert _kept(rows['bias:23']) == expected
  assert _kept(rows['bias_batchstats:23']) == dict(expected, **{b: 4 * n for b, n in BN.items()})
  bn_rows = [r for r in rows['bias:23']['layers'] if r['kind'] == 'BatchNormalization']
  assert len(bn_rows) == 7 and all('inference mode' in r['why'] for r in bn_rows)
  assert rows['bias:23']['total_bytes'] == (rows['bias_batchstats:23']['total_bytes']
                                            - 4 * sum(BN.values()))
