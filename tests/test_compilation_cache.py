"""JAX's persistent compilation cache: a second sweep compiles nothing and reports the same."""

import json

import jax
from jax import monitoring

from tljax.runtime import backend
from tljax.training import compiled
from tljax.sweep import runner
from tests.conftest import shrunk_default

_EVENTS = ('/jax/compilation_cache/cache_hits', '/jax/compilation_cache/cache_misses')


def _sweep_counting_cache_events(config, workdir):
  """The sweep's summary and its {event: count} of persistent-cache hits and misses."""
  counts = dict.fromkeys(_EVENTS, 0)

  def listen(event, **kwargs):
    del kwargs
    if event in counts:
      counts[event] += 1

  monitoring.register_event_listener(listen)
  try:
    summary = runner.train_and_evaluate(config, str(workdir))
  finally:
    monitoring.unregister_event_listener(listen)
  return summary, counts


def _numbers(summary):
  """Every case's accuracy, loss and accounting fields (timings aside)."""
  keep = ('test_accuracy', 'test_loss', 'train_flops_per_step', 'eval_flops_per_example',
          'trainable_params', 'energy_per_example_j', 'train_memory_bytes')
  return [{k: r.get(k) for k in keep} for r in summary['runs']]


def test_a_second_sweep_loads_every_step_from_the_cache(tmp_path):
  config = shrunk_default(tmp_path / 'cache')
  config.cases = (1, 23)
  config.compilation_cache, config.compilation_cache_dir = True, ''  # under cache_dir
  # The shared eval step is kept per process (compiled.compile_eval): an earlier test in this
  # worker must not have compiled it already, or run 1 never writes it to the cache.
  compiled._EVAL_CACHE.clear()  # pylint: disable=protected-access
  try:
    first, miss = _sweep_counting_cache_events(config, tmp_path / 'first')
    cache = tmp_path / 'cache' / 'xla_compiled'
    assert backend.compilation_cache_dir(config) == str(cache)
    assert jax.config.jax_compilation_cache_dir == str(cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert miss['/jax/compilation_cache/cache_misses'] == len(entries)
    second, hit = _sweep_counting_cache_events(config, tmp_path / 'second')
  finally:
    config.compilation_cache = False
    backend.use_compilation_cache(config)
  steps = {n for n in entries if n.startswith(('jit_train_step-', 'jit_eval_step-'))}
  assert len(steps) >= 3  # the two cases' train steps and the eval step, written by run 1
  new = sorted(set(p.name for p in cache.iterdir()) - set(entries))
  # Run 2 loads its pretrained weights from the pretraining cache, and copies them with a few
  # one-op programs run 1 never compiled; every step it compiled came from the cache.
  assert all(n.startswith('jit_copy-') for n in new), new
  assert hit['/jax/compilation_cache/cache_misses'] == len(new)
  assert hit['/jax/compilation_cache/cache_hits'] >= len(steps)
  assert _numbers(first) == _numbers(second)  # the same executables: the same numbers, bit for bit
  assert _numbers(first)[0]['train_flops_per_step'] > 0
  assert not jax.config.jax_enable_compilation_cache  # off again for the other tests
  saved = json.loads((tmp_path / 'second' / 'config.json').read_text())
  assert saved['compilation_cache'] is True
