"""The prefix cache's cost model: which runs cache, at which cut, filling only what they visit."""

import numpy as np
import pytest

from configs import folders
from tljax.accounting import costs
from tljax.data import datasets
from tljax.sweep import runner
from tljax.training import cache_plan
from tljax.training import case as case_lib
from tljax.training import freezing
from tljax.training import prefix_cache


def _train_batch_indices(n, batch, seed, epochs, per_epoch, start_step=0):
  """Every example index datasets.train_batches yields over the run (the fit loop's calls)."""
  arrays = datasets.Arrays(np.arange(n), np.zeros(n, np.int32), 2, 'x', 'train')
  out = []
  for epoch in range(start_step // per_epoch, epochs):
    batches = datasets.train_batches(arrays, batch, seed=seed, epoch=epoch, prep=lambda x: x,
                                     start_step=max(start_step - epoch * per_epoch, 0))
    for i, (images, _) in enumerate(batches):
      if i + max(start_step - epoch * per_epoch, 0) >= per_epoch:
        break
      out.append(images)
  return np.concatenate(out)


@pytest.mark.parametrize('start_step', [0, 7, 13])
def test_visited_is_what_train_batches_visit(start_step):
  seen = _train_batch_indices(103, 8, 5, 3, 6, start_step)
  used, passes = cache_plan.visited(103, 8, 5, 3, 6, start_step)
  assert passes == len(seen) == (18 - start_step) * 8
  np.testing.assert_array_equal(used, np.unique(seen))


def _issue_run(**fields):
  """The issue's real-folder run: 60,000 gray 32x32 uint8 train images, batch 64, 150 steps in
  each of 2 epochs: 300 steps, 19,200 example passes."""
  c = folders.get_config()
  c.update(dict(batch_size=64, steps_per_epoch=150, epochs=2, **fields))
  train = datasets.Arrays(np.zeros((60_000, 32, 32, 1), np.uint8), np.zeros(60_000, np.int32),
                          10, 'real', 'train')
  return c, train


def _plan(config, name, train):
  """The plan's decision for case `name`, from shapes and FLOPs only (nothing compiled or run):
  the forward FLOPs are the textbook count, 2 x MACs."""
  case = case_lib.make_case(config, name, num_classes=10)
  deepest = prefix_cache.cut_index(case.model, case.trainable_names,
                                   freezing.trainable_params_by_layer(case.labels))
  forward = 2 * sum(l['macs'] for l in costs.layer_macs(case.model, case.variables, (32, 32, 1)))
  return cache_plan.plan(config, case.model, case.variables, deepest, forward, train)


def test_the_issues_norm_case_does_not_cache_and_its_last_layer_case_does():
  """norm:23 could only cache the first conv's output, 32x32x32 float32 = 128 KiB per example
  (128x the uint8 input) to save one 3x3 conv (0.6 MFLOP) per pass; its 19,200 passes visit
  17,6xx distinct examples, so it would save ~1,500 convs, 0.02 s, for seconds of writing and
  reading: no cache. last:1 caches the 128 features below dense_1 (512 B, less than the input)
  and saves the whole forward pass (~77 MFLOP) of every pass over an example seen before
  (~1,500 of them, ~3 s at 40 GFLOP/s): cache, filling only the examples visited."""
  config, train = _issue_run()
  norm = _plan(config, 'norm:23', train).record()
  assert norm['decision'] == 'none'
  assert norm['cut_layer'] == 'batch_normalization' and norm['feature_bytes_per_example'] == (
      32 * 32 * 32 * 4)
  assert norm['gain_s'] < 0 and 'would cost' in norm['reason']
  last = _plan(config, 'last:1', train)
  rec = last.record()
  assert last.cache and rec['decision'] == 'cache'
  assert rec['cut_layer'] == 'dense_1' and rec['feature_bytes_per_example'] == 128 * 4
  used, passes = cache_plan.visited(60_000, 64, 0, 2, 150)
  assert rec['example_passes'] == passes == 19_200
  assert rec['examples_visited'] == len(used) and 17_000 < len(used) < 18_500
  assert rec['bytes'] == len(used) * 512 and rec['location'] == 'memory'
  assert rec['gain_s'] >= cache_plan.MIN_GAIN_S
  assert rec['saved_flops'] == pytest.approx((passes - len(used)) * rec['prefix_flops_per_example'])


def test_a_run_that_visits_each_example_once_never_caches():
  """300 steps in one epoch: 19,200 distinct examples, each passed once, so the fill would run
  the same prefix passes training would have run; even last:1 trains uncached."""
  config, train = _issue_run()
  config.update(dict(steps_per_epoch=300, epochs=1))
  d = _plan(config, 'last:1', train)
  assert not d.cache and 'visited once' in d.reason
  assert d.record()['examples_visited'] == d.record()['example_passes'] == 19_200
  assert not _plan(config, 'bias:23', train).cache  # trains conv2d's bias: nothing frozen below


def test_a_run_fills_only_the_examples_it_visits(tiny_config, tmp_path, monkeypatch):
  filled = []
  real_build = prefix_cache.build

  def build(compiled, train, visits, **kwargs):
    filled.append((len(train), np.sort(visits.order)))
    return real_build(compiled, train, visits, **kwargs)

  monkeypatch.setattr(prefix_cache, 'build', build)
  c = tiny_config
  c.pretrained = 'none'
  c.cases = (1,)
  c.epochs, c.steps_per_epoch = 2, 3
  c.prefix_cache_always = True
  summary = runner.train_and_evaluate(c, str(tmp_path / 'always'))
  n = summary['train_examples']
  seen = np.unique(_train_batch_indices(n, 16, 0, 2, 3))
  assert len(filled) == 1 and len(seen) <= 96 < n
  for (split, used), rec in zip(filled, summary['runs']):
    assert split == n
    np.testing.assert_array_equal(used, seen)
    assert rec['prefix_cache'] and rec['prefix_cache_examples'] == len(seen)
    assert rec['prefix_cache_decision']['examples_visited'] == len(seen)
    assert rec['prefix_cache_decision']['reason'] == 'config.prefix_cache_always'
  assert summary['runs'][0]['prefix_cache_bytes'] == len(seen) * 128 * 4
  c.prefix_cache_always = False  # the cost model: 96 passes save nothing worth a second
  plain = runner.train_and_evaluate(c, str(tmp_path / 'model'))
  assert len(filled) == 1
  for rec, cached in zip(plain['runs'], summary['runs']):
    assert not rec['prefix_cache'] and rec['prefix_cache_decision']['decision'] == 'none'
    assert rec['prefix_cache_bytes'] == 0 and rec['prefix_cache_decision']['gain_s'] < 1
    assert rec['test_loss'] == pytest.approx(cached['test_loss'], rel=1e-4)



@pytest.mark.parametrize('start,stop', [(0, 18), (0, 5), (7, 13), (13, 18), (6, 6)])
def test_visits_fill_chunks_hold_what_the_steps_read(start, stop):
  """Rows in first-visit order, chunks of `batch` rows: the chunks a part of the run fills hold
  every example its steps read, and the chunks are the same whichever part fills them."""
  v = cache_plan.Visits.of(103, 8, 5, 3, 6)
  np.testing.assert_array_equal(np.sort(v.order), cache_plan.visited(103, 8, 5, 3, 6)[0])
  np.testing.assert_array_equal(v.order[:8], np.sort(_train_batch_indices(103, 8, 5, 1, 1)))
  assert v.new_by[-1] == len(v.order) and v.chunks_total == -(-len(v.order) // 8)
  read = _train_batch_indices(103, 8, 5, 3, 6, start)[:(stop - start) * 8]
  chunks = v.chunks(start, stop)
  assert set(v.row_of[read] // 8) == set(chunks)
  if start == 0:  # a run's first part fills the first chunks only
    np.testing.assert_array_equal(chunks, np.arange(-(-len(np.unique(read)) // 8)))


def test_a_resumed_run_decides_as_the_whole_run(tiny_config, tmp_path):
  """However far a run got, its decision is the whole run's and its rows are the whole run's
  (the same fill chunks give the same features: XLA:CPU may round an example differently by
  its place in a batch)."""
  c = tiny_config
  c.epochs, c.steps_per_epoch, c.prefix_cache_always = 2, 3, True
  train = datasets.Arrays(np.zeros((500, 32, 32, 1), np.uint8), np.zeros(500, np.int32), 5, 'x',
                          'train')
  compiled = prefix_cache.Compiled(22, 'dense_1', (128,), None, None, None, {'flops': 16e6},
                                   {}, {}, 0.0)
  d, visits = cache_plan.for_run(c, None, compiled, train, 0, str(tmp_path))
  assert d.cache and d.record()['examples_visited'] == len(visits.order)
  np.testing.assert_array_equal(np.sort(visits.order),
                                np.unique(_train_batch_indices(500, 16, 0, 2, 3)))


def test_kept_caches_stay_within_the_memory_budget_and_serve_only_their_run(tmp_path,
                                                                            monkeypatch):
  train = datasets.Arrays(np.zeros((103, 4, 4, 1), np.uint8), np.zeros(103, np.int32), 2, 'x',
                          'train')
  compiled = prefix_cache.Compiled(3, 'dense', (32,), None, None, None, {'flops': 1.0}, {}, {},
                                   0.0)
  visits = cache_plan.Visits.of(103, 8, 5, 3, 6)
  caches = [prefix_cache.build(compiled, train, visits, directory=str(tmp_path / str(i)),
                               budget=2**20) for i in range(3)]
  for c in caches:
    c.examples = c.rows // 2  # half filled: 128 B a row
  assert caches[0].location == 'memory' and caches[0].filled_bytes == c.rows // 2 * 128
  monkeypatch.setattr(prefix_cache, 'memory_budget', lambda: int(caches[0].filled_bytes * 2.5))
  kept = prefix_cache.Kept()
  for i, c in enumerate(caches):
    kept.keep(f'run{i}', c)
  assert list(kept.caches) == ['run0', 'run1'] and caches[2].train is None  # over: deleted
  assert kept.take('run0', ('another cut',)) is None and caches[0].train is None
  assert kept.take('run1', caches[1].key) is caches[1] and not kept.caches
