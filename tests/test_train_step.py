"""The train step: frozen parameters and statistics do not move; trainable ones do."""

import jax
import numpy as np
import pytest

from tljax.training import case as case_lib
from tljax.training import compiled


def _batch(config, seed):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(config.batch_size, 32, 32, 1)).astype(np.float32)
  y = rng.integers(0, 5, config.batch_size).astype(np.int32)
  return x, y


@pytest.mark.parametrize('n', [4, 9])
def test_frozen_bit_identical_trainable_moves(tiny_config, n):
  config = tiny_config
  case = case_lib.make_case(config, n, num_classes=5)
  before = jax.device_get(case.state)
  train_c = compiled.compile_steps(case.model, case.tx, case.trainable, case.state, config,
                                   eval_batch=16).train
  state = case.state
  for i in range(4):
    state, metrics = train_c(state, *_batch(config, i))
    assert np.isfinite(metrics['loss'])
  after = jax.device_get(state)
  trainable_layers = set(case.trainable_names)
  for layer in before.params:
    for name in before.params[layer]:
      b, a = before.params[layer][name], after.params[layer][name]
      if layer in trainable_layers:
        assert not np.array_equal(a, b), f'{layer}/{name} did not train'
      else:
        assert a.tobytes() == b.tobytes(), f'frozen {layer}/{name} moved'
  for layer in before.batch_stats:
    for name in ('mean', 'var'):
      b, a = before.batch_stats[layer][name], after.batch_stats[layer][name]
      if layer in trainable_layers:
        assert not np.array_equal(a, b), f'{layer} statistics did not move'
      else:
        assert a.tobytes() == b.tobytes(), f'frozen {layer} statistics moved'
  assert int(after.step) == 4


def test_same_seed_same_numbers(tiny_config):
  outs = []
  for _ in range(2):
    case = case_lib.make_case(tiny_config, 9, num_classes=5)
    train_c = compiled.compile_steps(case.model, case.tx, case.trainable, case.state,
                                     tiny_config, eval_batch=16).train
    state = case.state
    losses = []
    for i in range(3):
      state, m = train_c(state, *_batch(tiny_config, i))
      losses.append(float(m['loss']))
    outs.append((losses, jax.device_get(state.params['dense_1']['kernel'])))
  assert outs[0][0] == outs[1][0]
  assert outs[0][1].tobytes() == outs[1][1].tobytes()
