"""compile_s is each case's own: the shared eval step's compilation is reported once."""

import types

import pytest

from tljax.runtime import backend
from tljax.sweep import runner
from tljax.training import case as case_lib
from tljax.training import compiled

TRAIN_S, EVAL_S = 1.0, 10.0


@pytest.fixture
def fake_compile_clock(monkeypatch):
  """train's clock advances only while compiling: TRAIN_S per train step, EVAL_S per eval step."""
  clock = [0.0]
  real_compile = backend.compile

  def compile_(lowered, config=None):
    clock[0] += EVAL_S if 'eval_step' in lowered.as_text()[:2000] else TRAIN_S
    return real_compile(lowered, config)

  monkeypatch.setattr(backend, 'compile', compile_)
  monkeypatch.setattr(compiled, 'time', types.SimpleNamespace(perf_counter=lambda: clock[0]))
  monkeypatch.setattr(compiled, '_EVAL_CACHE', {})  # the eval step is compiled in this test
  return clock


def test_each_case_compile_s_is_its_own(tiny_config, fake_compile_clock):
  tiny_config.prefix_cache = False
  plans = [case_lib.plan_case(tiny_config, n, 5, 128) for n in (1, 23)]
  # Before: the first case to compile the shared eval step counted it (11 s, then 1 s).
  assert [p.compile_s for p in plans] == [TRAIN_S, TRAIN_S]
  assert [p.eval_compile_s for p in plans] == [EVAL_S, EVAL_S]
  assert fake_compile_clock[0] == 2 * TRAIN_S + EVAL_S  # the eval step compiled once


def test_summary_reports_the_eval_compilation_once(tiny_config, fake_compile_clock, tmp_path):
  tiny_config.prefix_cache = False
  tiny_config.compile_workers = 1  # the fake clock is one for every thread
  tiny_config.pretrained = 'none'
  tiny_config.cases = (1, 4)
  summary = runner.train_and_evaluate(tiny_config, str(tmp_path / 'w'))
  assert summary['eval_compile_s'] == EVAL_S
  assert [c['compile_s'] for c in summary['runs']] == [TRAIN_S, TRAIN_S]
