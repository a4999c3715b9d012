"""FLOPs that do not depend on the depthwise implementation: B0 dry runs with each one forced."""

import jax
import pytest

from configs import base, test2
from tests.conftest import XLA_CACHE
from tljax.accounting import costs
from tljax.sweep import runner
from tljax.training import compiled
from tljax.training import prefix_cache

# Head + the last 16 base layers: block7a (its depthwise conv trainable) and the top.
CASES = (16,)
SAME = ('train_flops_per_step', 'train_flops_per_example', 'forward_flops_per_example',
        'xla_to_analytic_train_flops', 'energy_per_example_j', 'energy_per_step_j',
        'energy_total_j', 'compute_flops_total', 'analytic_train_flops_per_example',
        'thesis_energy_per_example_j')


def _dry_run_config(impl):
  c = test2.get_config()
  c.dry_run = True
  c.progress = False
  c.image_size = 32
  c.batch_size = 8
  c.eval_batch_size = 16
  c.cases = CASES
  c.depthwise_impl = impl
  # Without the prefix cache: 5 B0 compiles instead of 14 (the cached steps' FLOPs come from
  # the same twin, tested below with prefix_cache.count_on).
  c.prefix_cache = False
  return c


@pytest.fixture(scope='module')
def summaries(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('depthwise')
  out = {}
  for impl in ('slices', 'grouped'):
    c = _dry_run_config(impl)
    c.cache_dir = str(tmp / 'cache')  # not the repository's artifacts/cache
    c.compilation_cache_dir = XLA_CACHE
    out[impl] = runner.train_and_evaluate(c, str(tmp / impl))
  return out


def test_dry_run_flops_agree_whichever_depthwise_impl_runs(summaries):
  for s, g in zip(summaries['slices']['cases'], summaries['grouped']['cases']):
    assert s['trainable_depthwise_layers'] >= 1
    assert (s['depthwise_impl'], s['depthwise_impl_counted']) == ('slices', 'slices')
    assert (g['depthwise_impl'], g['depthwise_impl_counted']) == ('grouped', 'slices')
    for f in SAME:
      assert g[f] == pytest.approx(s[f], rel=0.05), f


def test_the_grouped_count_alone_would_be_inflated(summaries):
  """What the fix corrects: the grouped step's own compiled count (kept as flops_as_compiled)
  exceeds the slices count by far more than 5 % (XLA counts its depthwise kernel gradient ~C
  times); the slices run reports its own count."""
  for s, g in zip(summaries['slices']['cases'], summaries['grouped']['cases']):
    assert g['train_memory']['flops_as_compiled'] > 1.15 * g['train_flops_per_step']
    assert 'flops_as_compiled' not in s['train_memory']
    assert s['train_memory']['flops'] == s['train_flops_per_step']


def test_counting_model_is_the_slices_twin():
  b0 = compiled.model_for(_dry_run_config('grouped'), 10)
  twin = costs.counting_model(b0)
  assert twin.depthwise_impl == 'slices' and twin.variant == b0.variant
  assert costs.counting_model(twin) is None
  assert costs.depthwise_impls(b0) == ('grouped', 'slices')
  assert costs.depthwise_impls(compiled.model_for(_dry_run_config('auto'), 10)) == (
      'slices' if jax.default_backend() == 'cpu' else 'grouped', 'slices')
  small = compiled.model_for(base.get_config(), 10)
  assert costs.depthwise_impls(small) == (None, None)
  assert costs.counting_model(small) is None


def test_cached_steps_take_the_twins_flops_and_bytes_and_keep_their_memory():
  def compiled(flops, memory):
    costs = dict(flops=flops, bytes_accessed=flops * 3, memory_bytes=memory)
    return prefix_cache.Compiled(3, 'x', (1,), None, None, None, dict(costs), dict(costs),
                                 dict(costs), 2.0)
  runs, twin = compiled(100.0, 7), compiled(10.0, 9)
  prefix_cache.count_on(runs, twin)
  for cost in (runs.prefix_cost, runs.train_cost, runs.eval_cost):
    assert cost == dict(flops=10.0, flops_as_compiled=100.0, bytes_accessed=30.0,
                        bytes_accessed_as_compiled=300.0, memory_bytes=7)
  assert runs.compile_s == 4.0
