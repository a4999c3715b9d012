"""FLOP, energy and memory accounting against formulas and XLA's compiled count."""

import pytest

from tljax.accounting import costs
from tljax.training import case as case_lib
from tljax.training import compiled
from tljax.training import freezing

CASES = (1, 4, 9, 11, 17, 23)
BATCH = 16
# Forward MACs per example of the small CNN's weighted layers (10 classes), by formula:
# conv: H*W*9*Cin*Cout (SAME padding), dense: in*out.
CONV_MACS = {
    'conv2d': 32 * 32 * 9 * 1 * 32, 'conv2d_1': 32 * 32 * 9 * 32 * 32,
    'conv2d_2': 16 * 16 * 9 * 32 * 64, 'conv2d_3': 16 * 16 * 9 * 64 * 64,
    'conv2d_4': 8 * 8 * 9 * 64 * 128, 'conv2d_5': 8 * 8 * 9 * 128 * 128,
    'dense': 2048 * 128, 'dense_1': 128 * 10,
}


@pytest.fixture(scope='module')
def case_costs():
  """Compiled train/eval costs and analytic counts of the six cases (batch 16, 10 classes)."""
  from configs import default
  config = default.get_config()
  config.batch_size = BATCH
  out = {}
  for n in CASES:
    case = case_lib.make_case(config, n, num_classes=10)
    steps = compiled.compile_steps(case.model, case.tx, case.trainable, case.state, config,
                                   eval_batch=BATCH)
    train_c, eval_c = steps.train, steps.eval
    per_layer = costs.layer_macs(case.model, case.variables, (32, 32, 1))
    out[n] = dict(train=costs.xla_costs(train_c), eval=costs.xla_costs(eval_c),
                  per_layer=per_layer,
                  analytic=costs.analytic_train_macs(
                      per_layer, freezing.trainable_params_by_layer(case.labels)))
  return out


def test_analytic_per_layer_macs_match_the_formula(case_costs):
  per_layer = {l['name']: l['macs'] for l in case_costs[1]['per_layer']}
  assert {k: v for k, v in per_layer.items() if v} == CONV_MACS
  assert case_costs[1]['analytic']['forward'] == sum(CONV_MACS.values())


def test_train_flops_strictly_increase_across_cases(case_costs):
  flops = [case_costs[n]['train']['flops'] for n in CASES]
  assert all(a < b for a, b in zip(flops, flops[1:])), flops
  mem = [case_costs[n]['train']['memory_bytes'] for n in CASES]
  assert mem[-1] > mem[0] > 0


def test_full_fine_tuning_is_2_5_to_3_5_forward(case_costs):
  fwd = case_costs[23]['eval']['flops']
  ratio = case_costs[23]['train']['flops'] / fwd
  assert 2.5 < ratio < 3.5, ratio


def test_head_only_is_forward_plus_head_backward(case_costs):
  """With only dense_1 trainable, no backward work below it: train ~ forward + head backward."""
  fwd = case_costs[1]['eval']['flops']
  head_backward = 2 * 2 * BATCH * 128 * 10  # weight gradient + input-free: 2 FLOPs per MAC
  train_flops = case_costs[1]['train']['flops']
  assert train_flops >= fwd
  assert train_flops <= 1.03 * (fwd + head_backward), train_flops / fwd


def test_xla_count_agrees_with_the_analytic_count(case_costs):
  for n in CASES:
    xla = case_costs[n]['train']['flops'] / BATCH
    analytic = 2 * case_costs[n]['analytic']['total']
    # XLA omits SAME-padding taps (-6..-12 % on 32x32..8x8 maps) and adds elementwise work.
    assert 0.85 < xla / analytic < 1.05, (n, xla / analytic)


def test_analytic_train_count_terms():
  layers = [dict(name='a', kind='Conv2D', weighted=True, macs=100),
            dict(name='b', kind='Dropout', weighted=False, macs=0),
            dict(name='c', kind='Conv2D', weighted=True, macs=10),
            dict(name='d', kind='Dense', weighted=True, macs=1)]
  both = ('kernel', 'bias')
  got = costs.analytic_train_macs(layers, {'c': both, 'd': both})
  assert got == dict(forward=111, weight_grad=11, input_grad=1, total=123, trainable_forward=11)
  full = costs.analytic_train_macs(layers, {'a': both, 'b': (), 'c': both, 'd': both})
  assert full['input_grad'] == 11 and full['total'] == 111 + 111 + 11
  # A layer that trains nothing below the lowest trainable one changes nothing.
  assert costs.analytic_train_macs(layers, {'b': (), 'c': both, 'd': both}) == got
  # Bias-only layers pay no weight gradient, but input gradients reach the lowest of them.
  bias = costs.analytic_train_macs(layers, {'a': ('bias',), 'c': ('bias',), 'd': both})
  assert bias == dict(forward=111, weight_grad=1, input_grad=11, total=123, trainable_forward=1)
  with pytest.raises(ValueError, match='must be a dict'):
    costs.analytic_train_macs(layers, ('c', 'd'))


def _small_cnn_analytic(n):
  from configs import default
  case = case_lib.make_case(default.get_config(), n, num_classes=10)
  per_layer = costs.layer_macs(case.model, case.variables, (32, 32, 1))
  return costs.analytic_train_macs(per_layer, freezing.trainable_params_by_layer(case.labels))


def test_input_gradients_start_at_the_lowest_trainable_layer_with_weights():
  """Case 5 adds only the weightless flatten to case 4: the same step, the same count (XLA's
  compiled count is identical too). Before the fix case 5 counted dense's input gradient,
  2048 x 128 = 262,144 MACs more."""
  four, five = _small_cnn_analytic(4), _small_cnn_analytic(5)
  assert five == four
  assert four['input_grad'] == 128 * 10  # dense_1's input gradient only
  assert four['weight_grad'] == 2048 * 128 + 128 * 10


def test_efficientnet_head_only_input_gradients_start_at_dense():
  import jax
  import jax.numpy as jnp
  from tljax import models
  model = models.create('efficientnet_b0', num_classes=7)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  per_layer = costs.layer_macs(model, variables, (32, 32, 3))
  head = freezing.case_layers(model.keras_layers(), 0, 'base')
  assert head[0] == 'global_average_pooling2d'
  labels = freezing.label_tree(variables['params'], freezing.case_rules(head), log=False)
  got = costs.analytic_train_macs(per_layer, freezing.trainable_params_by_layer(labels))
  assert got['weight_grad'] == 1280 * 128 + 128 * 7
  assert got['input_grad'] == 128 * 7  # not dense's 1280 x 128 as well


def test_energy_formulas():
  assert costs.energy_j(2e9) == pytest.approx(1e9 * 3.2e-12)
  assert costs.energy_j(2e9, e_mac_j=1e-12) == pytest.approx(1e-3)
  # The thesis's FC-only energy (CIFAR-10): 2048*128 + 128*10 MACs x 3.2 pJ = 843 nJ ("850").
  assert (2048 * 128 + 128 * 10) * costs.DEFAULT_E_MAC_J == pytest.approx(842.9568e-9)
