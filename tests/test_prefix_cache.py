"""Frozen-prefix caching: model splits compose, cached runs match uncached ones, accounting."""

import os

import jax
import numpy as np
import pytest

from configs import default
from tests.conftest import XLA_CACHE
from tljax import models
from tljax.sweep import runner
from tljax.training import case as case_lib
from tljax.training import cache_plan
from tljax.training import prefix_cache


def _names(model):
  return [l.name for l in model.keras_layers()]


def test_small_cnn_prefix_then_suffix_is_the_whole_model_at_every_cut():
  model = models.create('small_cnn', num_classes=5)
  x = jax.random.uniform(jax.random.key(0), (3, 32, 32, 1))
  variables = model.init(jax.random.key(1), x)
  full = model.apply(variables, x)
  assert model.cut_points() == tuple(range(24))
  for k in model.cut_points():
    h = model.apply(variables, x, stop=k)
    np.testing.assert_allclose(model.apply(variables, h, start=k), full, rtol=1e-5, atol=1e-6)
  by_name = model.apply(variables, model.apply(variables, x, stop='dense'), start='dense')
  np.testing.assert_allclose(by_name, full, rtol=1e-5, atol=1e-6)


def test_small_cnn_suffix_dropout_masks_and_statistics_match_the_whole_model():
  model = models.create('small_cnn', num_classes=5)
  model = model.clone(frozen=frozenset(_names(model)[:16]))  # dense (16) onwards trains
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 1))
  variables = model.init(jax.random.key(1), x)
  rngs = {'dropout': jax.random.key(2)}
  full, full_vars = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs=rngs)
  h = model.apply(variables, x, stop=16)
  out, out_vars = model.apply(variables, h, start=16, train=True, mutable=['batch_stats'],
                              rngs=rngs)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-6)
  # The whole batch_stats collection comes back (frozen layers untouched), as the state needs.
  assert jax.tree.structure(out_vars) == jax.tree.structure(full_vars)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               out_vars, full_vars)


@pytest.fixture(scope='module')
def b0():
  """B0 at 32x32 with random variables (numpy: an XLA init of B0 takes ~30 s on CPU)."""
  model = models.create('efficientnet_b0', num_classes=4)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3)) * 255.0
  shapes = jax.eval_shape(model.init, jax.random.key(1), x)
  rng = np.random.default_rng(0)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if 'var' in name:  # BatchNorm variances (and the Normalization std) must be positive
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    scale = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return (rng.normal(size=s.shape) * scale).astype(np.float32)

  return model, jax.tree_util.tree_map_with_path(fill, shapes), x


@pytest.mark.parametrize('cut', ['stem_conv', 'block2a_expand_conv', 'block4a_se_squeeze',
                                 'block6d_expand_conv', 'block7a_project_conv',
                                 'global_average_pooling2d', 'dense'])
def test_b0_prefix_then_suffix_is_the_whole_model(b0, cut):
  model, variables, x = b0  # eagerly: ~0.3 s a pass, against ~5 s to compile one
  full = model.apply(variables, x)
  out = model.apply(variables, model.apply(variables, x, stop=cut), start=cut)
  assert np.all(np.isfinite(full)) and np.std(full) > 0
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)


def test_b0_cuts_cross_one_tensor_only():
  model = models.create('efficientnet_b0', num_classes=4)
  names = _names(model)
  cuts = {names[k] if k < len(names) else 'end' for k in model.cut_points()}
  # Inside a block with a residual add only its first layer; never inside squeeze-excite.
  assert {'block2b_expand_conv', 'block7a_project_conv', 'block7a_project_bn',
          'block1a_se_squeeze', 'global_average_pooling2d', 'end'} <= cuts
  assert not {'block2b_project_conv', 'block2b_add', 'block6d_expand_bn', 'block7a_se_reduce',
              'block7a_se_excite'} & cuts
  with pytest.raises(ValueError, match='more than one tensor'):
    model.apply({}, np.zeros((1, 2, 2, 192), np.float32), start='block6d_project_conv')


def test_cut_is_the_latest_valid_one_at_or_below_the_lowest_trainable_layer():
  b0 = models.create('efficientnet_b0', num_classes=4)
  names = _names(b0)
  cut = lambda first: names[prefix_cache.cut_index(b0, names[names.index(first):])]
  assert cut('global_average_pooling2d') == 'dense'  # head only: pooling is deterministic
  assert cut('top_conv') == 'top_conv'
  assert cut('block7a_project_conv') == 'block7a_project_conv'  # block 7a has no residual
  assert cut('block6d_project_bn') == 'block6d_expand_conv'  # residual spans: whole block
  assert cut('block6d_se_expand') == 'block6d_expand_conv'
  cnn = models.create('small_cnn', num_classes=5)
  assert prefix_cache.cut_index(cnn, ('dense_1',)) == 22
  assert prefix_cache.cut_index(cnn, tuple(_names(cnn))) == 0  # nothing frozen: no cache
  assert prefix_cache.cut_index(cnn, ('max_pooling2d_2', 'dropout_2')) == 17  # dropout trains


def _config(cache_dir, **fields):
  c = default.get_config()
  c.pretrain_epochs = 1
  c.epochs = 2
  c.steps_per_epoch = 4
  c.batch_size = 16
  c.eval_batch_size = 128
  c.log_every_steps = 2
  c.progress = False
  c.cache_dir = str(cache_dir)
  c.cases = (1, 9)
  c.prefix_cache_always = True  # the cache itself, whatever the cost model says of 8 steps
  c.compilation_cache_dir = XLA_CACHE
  c.device_xla_check = False  # with the prefix cache: tests/test_summary_fields.py
  c.proxies = False  # on in the memory run: the proxies through a cached prefix
  for k, v in fields.items():
    c[k] = v
  return c


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  """The module's cache: the first sweep pretrains, the others reuse it."""
  return tmp_path_factory.mktemp('prefix_cache_c')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, cache_dir):
  """The same tiny sweep with the cache in memory, on disk, and without it."""
  root = tmp_path_factory.mktemp('prefix_cache')
  out = {}
  out['memory'] = runner.train_and_evaluate(_config(cache_dir, proxies=True),
                                            str(root / 'memory'))
  budget = prefix_cache.MEMORY_BUDGET_BYTES
  prefix_cache.MEMORY_BUDGET_BYTES = 0
  try:
    out['disk'] = runner.train_and_evaluate(_config(cache_dir), str(root / 'disk'))
  finally:
    prefix_cache.MEMORY_BUDGET_BYTES = budget
  out['off'] = runner.train_and_evaluate(_config(cache_dir, prefix_cache=False),
                                        str(root / 'off'))
  out['root'] = root
  return out


def test_cached_runs_match_the_uncached_run(runs):
  for mode in ('memory', 'disk'):
    for a, b in zip(runs[mode]['cases'], runs['off']['cases']):
      # The suffix is compiled as its own program, so XLA may fuse and reassociate its float
      # sums differently: a few ulps per step, compounded over 8 Adam steps, stay far below
      # 1e-4 relative. Accuracy counts argmaxes over 225 test examples: equal unless a logit
      # pair ties within that noise (then one example, 1/225).
      assert a['test_loss'] == pytest.approx(b['test_loss'], rel=1e-4)
      assert abs(a['test_accuracy'] - b['test_accuracy']) <= 1.0 / a['test_examples'] + 1e-9
      assert a['steps'] == b['steps'] == 8


def test_summary_reports_both_flop_figures(runs):
  for mode in ('memory', 'disk'):
    for c, off in zip(runs[mode]['cases'], runs['off']['cases']):
      assert c['prefix_cache'] is True
      assert c['prefix_cache_location'] == mode
      assert c['train_flops_per_step'] == off['train_flops_per_step']  # what a device pays
      assert 0 < c['cached_train_flops_per_step'] < c['train_flops_per_step']
      assert c['prefix_flops_total'] > 0
      assert c['compute_flops_total'] > c['prefix_flops_total']
  head, conv = runs['memory']['cases']
  assert head['prefix_cache_cut_layer'] == 'dense_1'
  # The train examples the 8 steps of 16 visit (2 epochs of 4 steps), not the test split.
  examples = len(cache_plan.visited(runs['memory']['train_examples'], 16, 0, 2, 4)[0])
  assert head['prefix_cache_examples'] == conv['prefix_cache_examples'] == examples
  assert head['prefix_cache_bytes'] == examples * 128 * 4  # dense's 128 features, float32
  assert conv['prefix_cache_cut_layer'] == 'conv2d_5'
  assert conv['prefix_cache_bytes'] == examples * 8 * 8 * 128 * 4
  # Head only: the cached step is ~1e4 times cheaper than the full forward + head backward.
  assert head['cached_train_flops_per_step'] * 1000 < head['train_flops_per_step']
  for run in ('memory', 'disk'):  # the cache files are gone after each case
    assert not [p for p in os.listdir(runs['root'] / run) if p.startswith('cache_case_')]


def test_prefix_cache_false_is_the_old_path(runs):
  for c in runs['off']['cases']:
    assert c['prefix_cache'] is False
    assert c['cached_train_flops_per_step'] is None
    assert c['prefix_flops_total'] == 0 and c['prefix_cache_bytes'] == 0
    assert c['prefix_cache_location'] is None
    assert c['compute_flops_total'] > c['train_flops_per_step'] * c['steps']  # + evaluation


def test_cached_step_keeps_the_whole_state_and_frozen_params(tmp_path):
  config = _config(tmp_path)
  case = case_lib.make_case(config, 9, num_classes=5)
  cut = prefix_cache.cut_index(case.model, case.trainable_names)
  compiled = prefix_cache.compile_steps(case.model, case.tx, case.trainable, case.state, config,
                                        eval_batch=16, cut=cut)
  before = jax.device_get(case.state)
  x = np.random.default_rng(0).normal(size=(16,) + compiled.feature_shape).astype(np.float32)
  state, m = compiled.train(case.state, x, np.arange(16, dtype=np.int32) % 5)
  assert np.isfinite(m['loss'])
  after = jax.device_get(state)
  assert jax.tree.structure(after) == jax.tree.structure(before)
  for layer in before.params:
    moved = any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(after.params[layer]), jax.tree.leaves(before.params[layer])))
    assert moved == (layer in case.trainable_names), layer


def test_keras_dropout_cache_stops_below_the_first_dropout_and_matches(tmp_path, cache_dir):
  """frozen_dropout='keras': frozen Dropout layers drop units, so the head-only case caches
  only conv2d..max_pooling2d (the cut at the lowest Dropout) and trains the same numbers."""
  out, summary = {}, None
  for cache in (True, False):
    config = _config(cache_dir, cases=(1,), frozen_dropout='keras', prefix_cache=cache)
    summary = runner.train_and_evaluate(config, str(tmp_path / str(cache)))
    out[cache] = summary['cases'][0]
  assert out[True]['prefix_cache_cut_layer'] == 'dropout'
  # conv2d .. max_pooling2d's 16x16x32 output, float32, for every train example visited.
  examples = out[True]['prefix_cache_examples']
  assert examples == len(cache_plan.visited(summary['train_examples'], 16, 0, 2, 4)[0])
  assert out[True]['prefix_cache_bytes'] == examples * 16 * 16 * 32 * 4
  assert out[True]['test_loss'] == pytest.approx(out[False]['test_loss'], rel=1e-4)
  assert out[True]['train_flops_per_step'] == out[False]['train_flops_per_step']
