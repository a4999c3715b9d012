"""The searches: modes checked before work, halving's rungs continue bit for bit and resume, a
proxy's top k, and cases outside the budget never trained."""

import json
import os
import sys
import types

import jax
import numpy as np
import pytest

from conftest import shrunk_default
from tljax.config import checks
from tljax.decision import console
from tljax.decision import figures
from tljax.sweep import fingerprints
from tljax.sweep import halving as halving_lib
from tljax.sweep import runner
from tljax.sweep import search
from tljax.training import cache_plan
from tljax.training import case as case_lib
from tljax.training import fit
from tljax.training import prefix_cache

CASES = ('last:1', 'last:4', 'last:9')
# Added to each case's validation accuracy: 9 steps of the shrunk default leave every case at
# chance, and the search's decisions are what these tests follow.
OFFSET = {'last:1': 0.0, 'last:4': 0.2, 'last:9': 0.1}


CACHED = dict(prefix_cache=True, prefix_cache_always=True)


def _config(tmp, **fields):
  c = shrunk_default(tmp / 'cache')
  c.cases = CASES
  c.epochs, c.steps_per_epoch, c.log_every_steps = 3, 3, 2  # 9 steps; rungs between log lines
  c.validation_fraction = 0.1  # 84 examples: one eval batch
  c.prefix_cache = False  # seconds to fill for every example (the prefix cache's own tests)
  for k, v in fields.items():
    setattr(c, k, v)
  return c


def test_modes_are_checked_before_any_work(tmp_path, monkeypatch):
  # A full run is the same run in every mode; the short measurement's step is in its numbers.
  assert {'search', 'search_top_k', 'halving_eta', 'halving_confidence'} <= set(
      fingerprints.SAFE_FIELDS)
  assert 'short_training_fraction' not in fingerprints.SAFE_FIELDS
  c = _config(tmp_path, validation_fraction=0.0, search='halving')
  with pytest.raises(ValueError, match=r"config.search='halving': needs "
                     r'config.validation_fraction > 0 \(it is 0.0\)'):
    checks.validate(c)
  for bad in ('proxy:', 'greedy'):
    c.search = bad
    with pytest.raises(ValueError, match=f"config.search='{bad}': must be 'exhaustive', "):
      checks.validate(c)
  c.search, c.validation_fraction, c.launcher = 'halving', 0.1, 'local'
  with pytest.raises(ValueError, match="runs inline, and config.launcher='local'"):
    checks.validate(c)
  c.launcher, c.search = 'inline', 'proxy:nope'
  _fake_scores(monkeypatch, {})
  with pytest.raises(ValueError, match=r"config.search='proxy:nope': no such proxy; accepted: "
                     'proxy:fake'):
    search.check(c)


def test_the_schedule_and_the_cut():
  assert halving_lib.rung_steps(150, 0.1, 3) == [15, 47]  # 0.1, 0.1 ** 0.5 of 150; then the full run
  assert halving_lib.rung_steps(9, 0.1, 2) == [1, 2, 4]
  assert halving_lib.rung_steps(3, 0.1, 3) == [1]  # 0.32 of 3 rounds to 1 as well
  low, high = halving_lib.wilson(0.9, 100)
  assert (round(low, 4), round(high, 4)) == (0.8256, 0.9448)
  results = {'a': (0.95, 100, 0.2), 'b': (0.92, 100, 0.3), 'c': (0.70, 100, 0.9),
             'd': (None, 0, None)}
  assert halving_lib.cut(results, 3) == (['a', 'b'], 0.95)  # b's interval reaches 0.95
  assert halving_lib.cut(results, 3, z=halving_lib.z_of(0.0)) == (['a'], 0.95)
  assert halving_lib.z_of(0.95) == pytest.approx(halving_lib.Z95)
  tie = {'a': (0.8, 10, 0.5), 'b': (0.8, 10, 0.4), 'c': (1.0, 10, 0.1)}
  assert halving_lib.cut(tie, 2) == (['a', 'b', 'c'], 0.8)  # equal accuracies tie with an interval
  assert halving_lib.cut(tie, 2, z=0) == (['b', 'c'], 0.8)  # without one, the lower loss goes on
  assert halving_lib.wilson(1.0, 10)[1] == 1.0 and halving_lib.cut(
      {'a': (1.0, 10, 0.2), 'b': (1.0, 10, 0.1)}, 2) == (['a', 'b'], 1.0)
  # Stopped, but within the line's 95 % interval: reported as a tie.
  assert halving_lib.tied(results, ['a'], 0.95) == ['b'] and halving_lib.tied(tie, ['b', 'c'], 0.8) == ['a']


def _fake_scores(monkeypatch, scores):
  calls = []

  def case_scores(sw, seed, pretrained, specs, plans, names):
    calls.append((seed, [s.name for s in specs], sorted(plans), names))
    assert pretrained is not None and set(plans) == {s.name for s in specs}
    return {n: {s.name: {'score': scores[s.name], 'cost_s': 0.5} for s in specs}
            for n in names}

  mod = types.ModuleType('tljax.proxies.scores')
  mod.NAMES, mod.case_scores = ('fake',), case_scores
  pkg = types.ModuleType('tljax.proxies')
  pkg.scores = mod
  monkeypatch.setitem(sys.modules, 'tljax.proxies', pkg)
  monkeypatch.setitem(sys.modules, 'tljax.proxies.scores', mod)
  return calls


def _no_figures(monkeypatch):
  """The figures take seconds per summary written, and are not what these tests check."""
  monkeypatch.setattr(figures, 'write_figure', lambda *a, **k: None)
  monkeypatch.setattr(figures, 'write_pareto', lambda *a, **k: None)


def _record_training(monkeypatch):
  """Every run_case call as (case, seed, stop_at_step), and the final params of full runs."""
  calls, finals = [], {}
  run_case, fit_ = case_lib.run_case, fit.fit

  def recording_run_case(config, plan, case, *a, stop_at_step=None, **k):
    calls.append((case.name, config.seed, stop_at_step))
    return run_case(config, plan, case, *a, stop_at_step=stop_at_step, **k)

  def recording_fit(state, loop):
    out = fit_(state, loop)
    if loop.tags.get('case') != 'pretrain' and out[1] == loop.epochs * 3:
      finals[loop.tags['run']] = jax.device_get(out[0].params)
    return out

  monkeypatch.setattr(case_lib, 'run_case', recording_run_case)
  monkeypatch.setattr(fit, 'fit', recording_fit)
  return calls, finals


@pytest.fixture(scope='module')
def halving(tmp_path_factory):
  """A halving search (eta 2: rungs at steps 1, 2, 4 of 9) stopped after its first rung, then
  rerun; the calls of the rerun, and its summary."""
  mp = pytest.MonkeyPatch()
  _no_figures(mp)
  tmp = tmp_path_factory.mktemp('halving')
  # The cut without intervals: the better half of the cases at each rung.
  # One compile thread, with the device-memory cross-check: what only records need (case.LATE)
  # compiles when a record needs it, so the stopped cases never compile it.
  # Every case trains on the prefix cache: a rung fills only the chunks its steps read.
  c = _config(tmp, search='halving', halving_eta=2, halving_confidence=0.0, compile_workers=1,
              device_xla_check=True, **CACHED)
  validate = case_lib._validate  # pylint: disable=protected-access
  fills = _record_fills(mp)

  def offset(config, plan, *a):
    acc, loss = validate(config, plan, *a)
    return acc + OFFSET[plan.case.name], loss

  mp.setattr(case_lib, '_validate', offset)
  saves = []
  save = search._State.save_rung  # pylint: disable=protected-access

  def stop_after_the_first_rung(self, name, seed, step, result):
    save(self, name, seed, step, result)
    saves.append((name, step))
    if len(saves) == len(CASES):
      raise KeyboardInterrupt('stopped after rung 0')

  with mp.context() as m:
    m.setattr(search._State, 'save_rung', stop_after_the_first_rung)  # pylint: disable=protected-access
    with pytest.raises(KeyboardInterrupt):
      runner.train_and_evaluate(c, str(tmp / 'w'))
  first = list(fills)
  fills.clear()
  calls, finals = _record_training(mp)
  summary = runner.train_and_evaluate(c, str(tmp / 'w'))
  yield tmp, c, summary, calls, finals, saves, (first, list(fills))
  mp.undo()


def _record_fills(monkeypatch):
  """Every prefix_cache.Cache.fill as (cache, (cut, seed), chunks asked for, chunks it
  filled)."""
  fills, fill = [], prefix_cache.Cache.fill

  def recording_fill(self, compiled, state, source, chunks, **k):
    todo = [int(i) for i in chunks if not self.train.images.filled[i]]
    fills.append((id(self), self.key[:2], [int(i) for i in chunks], todo))
    return fill(self, compiled, state, source, chunks, **k)

  monkeypatch.setattr(prefix_cache.Cache, 'fill', recording_fill)
  return fills


def test_halving_trains_rungs_then_the_finalist_and_resumes_mid_search(halving):
  _, c, summary, calls, _, saves, _ = halving
  assert saves == [(n, 1) for n in CASES]  # the first run: rung 0 of every case
  s = summary['search']
  assert s['mode'] == 'halving' and s['halving']['rung_steps'] == [1, 2, 4]
  rung1 = sorted(n for n, rs in s['rungs'].items() if len(rs) == 2)
  (finalist,) = s['trained_fully']
  (first_out,) = [n for n, r in s['stopped_early'].items() if r == 0]
  assert s['stopped_early'] == {first_out: 0, [n for n in rung1 if n != finalist][0]: 1}
  # The rerun trained no first rung again: rung 1 of the two that went on, then the finalist.
  assert calls == [(n, 0, 2) for n in CASES if n in rung1] + [(finalist, 0, None)]
  assert s['answer'] == finalist and [r['case'] for r in summary['runs']] == [finalist]
  by_case = {c['case']: c for c in summary['cases']}
  assert by_case[first_out]['status'] == 'stopped early (rung 0)'
  assert not by_case[first_out]['on_pareto_front']
  assert all(r['val_examples'] > 0 and r['val_ci95'][0] <= r['val_accuracy'] <= r['val_ci95'][1]
             for rs in s['rungs'].values() for r in rs)
  assert s['exhaustive_estimate_s'] > 0 and s['wall_s'] > 0
  late = [p['case'] for p in summary['compile']['programs'] if p['part'] == 'device']
  assert late == [finalist] and summary['compile']['late_s'] > 0
  assert summary['runs'][0]['xla_memory_at_device_batch_bytes'] > 0


def test_the_continued_run_is_the_uninterrupted_run_bit_for_bit_and_outside_budget_never_trains(
    halving, monkeypatch):
  tmp, c, summary, _, finals, _, _ = halving
  (finalist,) = summary['search']['trained_fully']
  calls, plain = _record_training(monkeypatch)
  e = _config(tmp, cases=(finalist, 'last:23'), max_energy_per_example_j=2e-4, **CACHED)
  out = runner.train_and_evaluate(e, str(tmp / 'e'))
  run = case_lib.run_key(finalist, 0)
  assert calls == [(finalist, 0, None)]  # last:23 is outside the budget: never trained
  jax.tree.map(np.testing.assert_array_equal, plain[run], finals[run])
  a, b = summary['runs'][0], out['runs'][0]
  for f in ('test_accuracy', 'test_loss', 'short_val_accuracy', 'steps'):
    assert a[f] == b[f], f
  assert a['short_train_s'] > 0 and b['short_train_s'] > 0
  lines = {}
  for w in ('w', 'e'):
    with open(tmp / w / 'metrics.jsonl') as f:
      lines[w] = [(l['step'], l['train_loss']) for l in map(json.loads, f) if l['run'] == run]
  assert lines['w'] == lines['e'] and len(lines['e']) == 5  # steps 2, 4, 6, 8, 9
  s = out['search']
  assert s['mode'] == 'exhaustive' and s['trained_fully'] == [finalist]
  assert s['exhaustive_estimate_s'] == pytest.approx(out['wall_s'])  # it is the exhaustive sweep
  assert list(s['outside_budget']) == ['last:23'] and out['failed_runs'] == []
  top = {x['case']: x for x in out['cases']}['last:23']
  assert top['status'] == 'outside budget' and top['energy_per_example_j'] > 2e-4
  assert not os.path.exists(tmp / 'e' / 'checkpoints' / case_lib.run_key('last:23', 0))


def test_a_rung_fills_only_its_steps_chunks_and_the_next_part_the_rest(halving):
  """Rung 0 (step 1, a batch of 16 = one chunk) fills chunk 0 of each case; after the resume
  each case going on fills what steps 1-2 read, and the finalist's full run fills the rest into
  the cache its rung kept: every chunk of the run filled once in this process."""
  _, c, summary, _, _, _, (first, rerun) = halving
  (finalist,) = summary['search']['trained_fully']
  assert [f[3] for f in first] == [[0]] * len(CASES) and c.batch_size == 16
  visits = {seed: cache_plan.Visits.of(summary['train_examples'], 16, seed, c.epochs, 3)
            for seed in c.seeds}
  for r in summary['runs']:
    assert r['prefix_cache'] and r['prefix_cache_examples'] == len(visits[r['seed']].order)
  seed0 = [f for f in rerun if f[1][1] == 0]  # (the fixture's only seed)
  assert [f[2] for f in seed0[:2]] == [list(visits[0].chunks(1, 2))] * 2
  (mine,) = [f for f in seed0[:2] if f[1] == seed0[2][1]]  # the finalist's rung 1 fill
  assert seed0[2][0] == mine[0] and len(seed0) == 3  # its full run: the same cache
  assert sorted(mine[3] + seed0[2][3]) == list(visits[0].chunks(1, 9))


def test_a_proxy_search_trains_only_its_top_k(halving, monkeypatch):
  tmp = halving[0]
  scores = _fake_scores(monkeypatch, {'last:1': 0.1, 'last:4': 0.9})
  calls, _ = _record_training(monkeypatch)
  c = _config(tmp, cases=('last:1', 'last:4'), search='proxy:fake', search_top_k=1)
  summary = runner.train_and_evaluate(c, str(tmp / 'p'))
  assert calls == [('last:4', 0, None)] and len(scores) == 1
  s = summary['search']
  assert (s['answer'], s['not_selected'], s['trained_fully']) == ('last:4', ['last:1'], ['last:4'])
  assert s['proxy'] == dict(name='fake', top_k=1, scores={'last:1': 0.1, 'last:4': 0.9},
                            cost_s=1.0)
  assert {x['case']: x['status'] for x in summary['cases']}['last:1'] == 'not selected'


def test_halving_cuts_on_the_first_seeds_full_runs_before_the_other_seeds(tmp_path, monkeypatch):
  _no_figures(monkeypatch)
  accuracy = {'last:1': 0.1, 'last:4': 0.9, 'last:9': 0.88}  # what the validation split says
  validate = case_lib._validate  # pylint: disable=protected-access
  monkeypatch.setattr(case_lib, '_validate', lambda config, plan, *a: (
      accuracy[plan.case.name], validate(config, plan, *a)[1]))
  calls, _ = _record_training(monkeypatch)
  # One rung at half the steps (3 -> 2 cases), then the last rung: their full first-seed runs,
  # cut without ties (the default confidence, 0.95, ties last:9 with the line there).
  c = _config(tmp_path, search='halving', halving_eta=2, short_training_fraction=0.5,
              seeds=(0, 1))
  assert c.halving_confidence == 0.95
  summary = runner.train_and_evaluate(c, str(tmp_path / 'w'))
  s = summary['search']
  (step,) = s['halving']['rung_steps']
  assert calls == [(n, 0, step) for n in CASES] + [('last:4', 0, None), ('last:9', 0, None),
                                                   ('last:4', 1, None)]
  assert s['trained_fully'] == ['last:4'] == [s['answer']]
  assert s['stopped_early'] == {'last:1': 0, 'last:9': 1}
  assert s['halving']['tied'] == [[], ['last:9']]  # named, though stopped
  n = summary['validation_examples']
  assert s['rungs']['last:9'][-1] == dict(
      rung=1, step=9, fraction=1.0, val_accuracy=0.88, val_examples=n,
      val_ci95=list(halving_lib.wilson(0.88, n)), val_loss=s['rungs']['last:9'][-1]['val_loss'])
  assert halving_lib.wilson(0.88, n)[1] >= 0.9
  runs = {(r['case'], r['seed']): r for r in summary['runs']}
  assert sorted(runs) == [('last:4', 0), ('last:4', 1), ('last:9', 0)]
  assert runs[('last:9', 0)]['val_accuracy'] == 0.88 and runs[('last:9', 0)]['val_loss'] > 0
  by_case = {x['case']: x for x in summary['cases']}
  assert by_case['last:9']['status'] == 'stopped early (rung 1)'
  assert by_case['last:9']['n_seeds'] == 1 and not by_case['last:9']['on_pareto_front']


def test_the_search_line_says_how_many_stops_were_not_significant():
  info = dict(mode='halving', answer='a', trained_fully=['a'], stopped_early={'b': 0, 'c': 1},
              not_selected=[], outside_budget={}, wall_s=10.0, exhaustive_estimate_s=40.0,
              halving=dict(tied=[['b'], []]))
  assert console._search_line(dict(cases=[{}] * 3, search=info)) == (  # pylint: disable=protected-access
      "Search halving: answer a; 1 of 3 cases trained fully; 2 stopped early (1 by a difference "
      "within the cut line's 95 % interval); 10 s, an exhaustive sweep estimated at 40 s (0.25x).")
