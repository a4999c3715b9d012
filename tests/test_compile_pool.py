"""The compile pool: the same numbers on any number of threads, counting twins off the critical
path, clean stops and failures, and its report."""

import os
import signal
import threading

import pytest

from tljax.accounting import costs
from tljax.config import checks
from tljax.decision import console
from tljax.runtime import interrupt
from tljax.sweep import runner
from tljax.training import case as case_lib
from tljax.training import compile_pool
from tljax.training import compiled

TIMING = {'wall_s', 'compile_s', 'examples_per_s'}


def _config(tiny_config, workers):
  c = tiny_config
  c.cases = (1, 23)  # case 1 caches a prefix (three more programs), case 23 does not
  c.pretrained = 'none'
  c.dry_run = True  # one step: the test is the compiled programs and what they count
  c.compile_workers = workers
  c.prefix_cache_always = True  # one step would not pay for a cache: its programs are the test
  return c


def _compile_threads():
  return [t for t in threading.enumerate() if t.name.startswith('tljax-compile')]


def _twin_after_case_23_starts(monkeypatch):
  """Counting twins on this CPU (the same steps compiled a second time, only to be counted), and
  case 1's compiling on the pool only once case 23 trains: a sweep that waited for it would hang.
  The event, set when case 23 starts."""
  monkeypatch.setattr(costs, 'counting_model', lambda model: model)
  trains = threading.Event()
  real_parts, real_run = case_lib.case_parts, case_lib.run_case

  def parts(config, case, *args, **kwargs):
    made, thunks = real_parts(config, case, *args, **kwargs)
    if made.name == 'last:1' and config.compile_workers != 1:
      twin = thunks['twin train']
      thunks['twin train'] = lambda: (trains.wait(120), twin())[1]
    return made, thunks

  def run(config, plan, case, *args, **kwargs):
    if case.name == 'last:23':
      trains.set()
    return real_run(config, plan, case, *args, **kwargs)

  monkeypatch.setattr(case_lib, 'case_parts', parts)
  monkeypatch.setattr(case_lib, 'run_case', run)
  return trains


def test_numbers_are_bit_identical_whatever_the_workers(tiny_config, tmp_path, monkeypatch):
  trains = _twin_after_case_23_starts(monkeypatch)
  out = {}
  for workers in (1, 2):
    monkeypatch.setattr(compiled, '_EVAL_CACHE', {})  # each sweep compiles its eval step
    out[workers] = runner.train_and_evaluate(_config(tiny_config, workers),
                                             str(tmp_path / str(workers)))
  assert trains.wait(0)  # the twin of case 1 delayed no training
  serial, pooled = ([{k: v for k, v in r.items() if k not in TIMING} for r in out[w]['runs']]
                    for w in (1, 2))
  assert [r['case'] for r in serial] == ['last:1', 'last:23']
  for r in serial:
    assert r['train_flops_per_step'] == r['train_memory']['flops_as_compiled'] > 0  # counted
    assert r['train_memory_bytes'] > 0
    assert r['test_accuracy'] is not None and r['test_loss'] is not None
  assert serial[0]['prefix_cache'] and serial[0]['compute_flops_total'] > 0
  assert pooled == serial  # accuracy, loss, FLOPs, memory: every number, exactly
  for r in pooled:  # the records that waited for their twins were saved
    assert (tmp_path / '2' / 'cases' / f'{case_lib.run_key(r["case"], 0)}.json').exists()
  one, two = out[1]['compile'], out[2]['compile']
  assert (one['workers'], two['workers']) == (1, 2)
  programs = [(p['case'], p['part'], p['step']) for p in one['programs']]
  assert programs[:5] == [
      ('last:1', 'train', 'train_step'), ('last:1', 'eval', 'eval_step'),
      ('last:1', 'prefix', 'prefix_forward'), ('last:1', 'prefix', 'train_step'),
      ('last:1', 'prefix', 'eval_step')]  # serial: case by case, as before the pool
  assert ('last:1', 'twin prefix', 'train_step') in programs
  assert programs[-2:] == [('last:23', 'train', 'train_step'),
                           ('last:23', 'twin train', 'train_step')]
  assert sorted(programs) == sorted((p['case'], p['part'], p['step']) for p in two['programs'])
  for c in (one, two):
    assert c['total_s'] == pytest.approx(sum(p['compile_s'] for p in c['programs']))
    assert 0 < c['wall_s'] and 0 <= c['overlap_s'] <= c['wall_s']
  assert one['overlap_s'] == 0  # serial: every program compiled before training
  assert two['overlap_s'] > 0  # case 1's twin compiled while case 23 trained
  line = console.table(out[2], figures=('f.png',)).splitlines()[-2]  # before the figures
  assert line.startswith(f'Compiled {len(programs)} programs on 2 threads: ')
  assert not _compile_threads()


def test_a_signal_while_the_pool_compiles_stops_cleanly(tiny_config, tmp_path, monkeypatch):
  real = compiled.compile_train
  monkeypatch.setattr(compiled, 'compile_train', lambda *a, **k: (
      interrupt.request(signal.SIGINT), real(*a, **k))[1])
  try:
    with pytest.raises(interrupt.Interrupted) as e:
      runner.train_and_evaluate(_config(tiny_config, 2), str(tmp_path))
  finally:
    interrupt.reset()
  assert e.value.signum == signal.SIGINT and 'compiling case' in e.value.detail
  assert not list(tmp_path.glob('cases/*.json')) and not _compile_threads()


def test_a_failed_compile_is_raised_and_stops_the_pool(tiny_config, tmp_path, monkeypatch):
  def fail(*a, **k):
    raise ValueError('no eval step for you')
  monkeypatch.setattr(compiled, 'compile_eval', fail)
  with pytest.raises(ValueError, match='no eval step for you'):
    runner.train_and_evaluate(_config(tiny_config, 2), str(tmp_path))
  assert not list(tmp_path.glob('cases/*.json')) and not _compile_threads()


def test_compile_workers_zero_is_one_per_two_cores(tiny_config):
  tiny_config.compile_workers = 0
  assert compile_pool.workers(tiny_config) == max(1, len(os.sched_getaffinity(0)) // 2)
  tiny_config.compile_workers = 3
  assert compile_pool.workers(tiny_config) == 3
  tiny_config.compile_workers = -1
  with pytest.raises(ValueError, match=r'compile_workers.*must be an int >= 0'):
    checks.validate(tiny_config)
