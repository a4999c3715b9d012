"""An honest summary: planned and finished seeds, runs failed for good, costs that differ."""

import json
import pickle

import pytest
from submitit.core import utils as submitit_utils

from configs import base
from tljax.cluster import job as job_lib
from tljax.cluster import jobs
from tljax.decision import console
from tljax.decision import figures
from tljax.decision import recommend
from tljax.decision import stats
from tljax import recommend as recommend_cli
from tljax.sweep import layout
from tljax.sweep import outputs
from tljax.training import case as case_lib

MIB = 2 ** 20
UJ = 1e-6
GPU, TPU = 'NVIDIA H100 80GB HBM3', 'TPU v5 lite'


def run(case, seed, acc, *, energy_uj, mem_mib, device=GPU, width=1):
  """A finished run record with the fields the decision reads."""
  return dict(case=case, seed=seed, status='ok', test_accuracy=acc, test_loss=0.3,
              energy_per_example_j=energy_uj * UJ, train_memory_bytes=int(mem_mib * MIB),
              trainable_params=1000, wall_s=10.0, diverged_at_step=None, device_kind=device,
              data_parallel_width=width)


def summary_of(runs, cases, seeds, failed=(), **config):
  """recommend.decide on a summary planned at `cases` x `seeds` (as outputs.finish leaves it),
  with a budget."""
  s = dict(name='t', seeds=list(seeds), planned_cases=list(cases), runs=runs,
           failed_runs=list(failed),
           config=dict(max_energy_per_example_j=1.0, budget_memory='xla', **config))
  return recommend.decide(s)


def by_case(summary):
  return {c['case']: c for c in summary['cases']}


def rows(summary):
  lines = console.table(summary).splitlines()[2:2 + len(summary['cases'])]
  return {l.split()[0].rstrip(':'): l for l in lines}


# 'full': 3 seeds at 0.90 +- 0.01, 100 uJ, 10 MiB. 'one': seed 0 only, 0.95 at 50 uJ, 5 MiB:
# better on all three, so today it is on the front alone and recommended.
def partial_runs():
  return [run('full', s, a, energy_uj=100, mem_mib=10) for s, a in enumerate((0.89, 0.90, 0.91))
          ] + [run('one', 0, 0.95, energy_uj=50, mem_mib=5)]


def test_one_of_three_seeds_is_incomplete_off_the_front_and_not_recommended():
  s = summary_of(partial_runs(), ['full', 'one'], [0, 1, 2])
  full, one = by_case(s)['full'], by_case(s)['one']
  assert one['status'] == 'incomplete' and (one['n_seeds'], one['n_seeds_planned']) == (1, 3)
  assert one['seeds'] == [0] and one['seeds_planned'] == [0, 1, 2]
  assert one['seeds_missing'] == [1, 2] and 'seeds 1, 2 not finished' in one['status_detail']
  assert one['on_pareto_front'] is False and full['on_pareto_front'] is True
  assert full['status'] == 'ok' and full['n_seeds_planned'] == 3 and full['status_detail'] is None
  assert s['recommendation']['pick']['case'] == 'full' and one['recommended'] is False
  r = rows(s)
  assert r['one'].startswith('one: incomplete') and '95.00 (1/3)' in r['one']
  assert '90.00 ± 2.48 (3)' in r['full'] and r['full'].endswith('*  <- pick')
  table = console.table(s)
  assert 'one: seeds 1, 2 not finished' in table
  assert 'left off the front and the recommendation (config.include_incomplete=True' in table


def test_include_incomplete_puts_it_on_the_front_and_recommends_it(tmp_path, capsys):
  s = summary_of(partial_runs(), ['full', 'one'], [0, 1, 2], include_incomplete=True)
  one = by_case(s)['one']
  assert one['status'] == 'incomplete' and one['on_pareto_front'] is True
  assert by_case(s)['full']['on_pareto_front'] is False  # 'one' dominates it
  assert s['recommendation']['pick']['case'] == 'one' and one['recommended'] is True
  text = recommend.format_recommendation(s['recommendation'])
  assert 'Recommended: one, test accuracy 95.00 % (1 of 3 seeds)' in text
  assert rows(s)['one'].endswith('*  <- pick')
  # The CLI reads the flag from the run's config, or from --include_incomplete.
  (tmp_path / 'summary.json').write_text(json.dumps(summary_of(partial_runs(), ['full', 'one'],
                                                               [0, 1, 2])))
  assert recommend_cli.run_cli(['recommend', f'--workdir={tmp_path}']) == 0
  assert 'Recommended: full' in capsys.readouterr().out
  assert recommend_cli.run_cli(['recommend', f'--workdir={tmp_path}', '--include_incomplete']) == 0
  assert 'Recommended: one' in capsys.readouterr().out


def test_a_case_whose_every_seed_failed_stays_in_the_summary(tmp_path):
  failed = [dict(case='gone', seed=s, reason='job 7 FAILED: RuntimeError: boom') for s in (0, 1)]
  failed.append(dict(case='half', seed=1, reason='job 8 FAILED: killed'))
  runs = [run('ok', s, 0.9, energy_uj=100, mem_mib=10) for s in (0, 1)]
  runs.append(run('half', 0, 0.99, energy_uj=10, mem_mib=1))
  s = summary_of(runs, ['ok', 'gone', 'half'], [0, 1], failed)
  assert [c['case'] for c in s['cases']] == ['ok', 'gone', 'half']  # the plan's order
  gone, half = by_case(s)['gone'], by_case(s)['half']
  assert gone['status'] == 'failed' and gone['n_seeds'] == 0 and gone['seeds_failed'] == [0, 1]
  assert gone['test_accuracy_mean'] is None and gone['on_pareto_front'] is False
  assert 'seeds 0, 1 failed for good' in gone['status_detail'] and 'boom' in gone['status_detail']
  assert half['status'] == 'failed' and half['on_pareto_front'] is False
  assert s['recommendation']['pick']['case'] == 'ok'
  assert s['failed_runs'] == failed
  r = rows(s)
  assert r['gone'].startswith('gone: failed') and '- (0/2)' in r['gone']
  assert '99.00 (1/2)' in r['half']
  # Every output is written, the figures mark both (no finished run: named in the corner).
  outputs.write(str(tmp_path), dict(s, model='m', source_dataset=None, target_dataset='d',
                                    dry_run=False, config=dict(s['config'], target_classes=())))
  assert (tmp_path / 'pareto.png').read_bytes().startswith(b'\x89PNG')
  results = (tmp_path / 'results.csv').read_text().splitlines()
  assert len(results) == 4 and any(l.startswith('gone,') and ',failed,' in l for l in results)
  # With include_incomplete a failed case with a finished run counts; one without never does.
  s = summary_of(runs, ['ok', 'gone', 'half'], [0, 1], failed, include_incomplete=True)
  assert by_case(s)['half']['on_pareto_front'] and not by_case(s)['gone']['on_pareto_front']


def test_failed_wins_over_missing():
  """A case with a run failed for good and another missing is 'failed', naming both."""
  (c,) = stats.aggregate([run('a', 0, 0.9, energy_uj=1, mem_mib=1)], cases=['a'],
                         seeds=[0, 1, 2], failed=[dict(case='a', seed=2, reason='job 9 FAILED')])
  assert c['status'] == 'failed' and c['seeds_missing'] == [1] and c['seeds_failed'] == [2]
  assert c['status_detail'] == ('seed 2 failed for good (seed 2: job 9 FAILED); seed 1 not '
                                'finished (a rerun on this workdir trains them)')
  # A failure record of a run that has since finished is ignored.
  (c,) = stats.aggregate([run('a', 0, 0.9, energy_uj=1, mem_mib=1)], cases=['a'], seeds=[0],
                         failed=[dict(case='a', seed=0, reason='old')])
  assert c['status'] == 'ok' and c['seeds_failed'] == []
  with pytest.raises(ValueError, match="failed run 0 is 'a': a failure record needs"):
    stats.aggregate([], failed=['a'])


def test_runs_whose_costs_differ_do_not_crash_the_summary(tmp_path):
  runs = [run('a', 0, 0.90, energy_uj=100, mem_mib=10),
          run('a', 1, 0.91, energy_uj=100, mem_mib=14, device=TPU, width=8),
          run('b', 0, 0.80, energy_uj=100, mem_mib=12),
          run('b', 1, 0.81, energy_uj=100, mem_mib=12)]
  s = summary_of(runs, ['a', 'b'], [0, 1])  # today: ValueError "case 'a' has no train_memory..."
  a = by_case(s)['a']
  assert a['status'] == 'costs_differ' and a['on_pareto_front'] is False
  assert a['status_detail'] == (
      f"train_memory_bytes differs between the runs of case 'a': seed 0 {10 * MIB} on {GPU} x1, "
      f'seed 1 {14 * MIB} on {TPU} x8')
  assert a['device_kind_values'] == [GPU, TPU] and a['data_parallel_width_values'] == [1, 8]
  assert s['recommendation']['pick']['case'] == 'b'
  assert rows(s)['a'].startswith('a: costs_differ')
  s = summary_of(runs, ['a', 'b'], [0, 1], include_incomplete=True)
  assert by_case(s)['a']['on_pareto_front'] is False  # never: it has no one cost
  figures.write_pareto(str(tmp_path / 'p.png'), s['cases'], 't')
  assert (tmp_path / 'p.png').exists()


def test_check_same_costs_and_device_name_both_device_kinds():
  a0 = run('a', 0, 0.9, energy_uj=1, mem_mib=1)
  a1 = run('a', 1, 0.9, energy_uj=1, mem_mib=2, device=TPU)
  stats.check_same_costs([a0, run('a', 1, 0.8, energy_uj=1, mem_mib=1)])  # same costs: passes
  with pytest.raises(ValueError, match=(
      f"train_memory_bytes differs between the runs of case 'a': seed 0 {MIB} on {GPU} x1, "
      f'seed 1 {2 * MIB} on {TPU} x1: the runs of one case must share their compiled costs')):
    stats.check_same_costs([a1, a0])
  stats.check_same_device([a0], 'a', GPU, 1)
  stats.check_same_device([a0, dict(case='b', seed=0, device_kind=TPU)], 'a', GPU, 1)
  stats.check_same_device([dict(case='a', seed=0)], 'a', TPU, 1)  # an old record: unknown
  with pytest.raises(ValueError, match=(
      f"case 'a': seed 0 trained on {GPU} x1, this process would train on {TPU} x1: the runs "
      'of one case must share their compiled costs')):
    stats.check_same_device([a0], 'a', TPU, 1)
  with pytest.raises(ValueError, match=f'on {GPU} x1, this process would train on {GPU} x8'):
    stats.check_same_device([a0], 'a', GPU, 8)


def _entry(case, acc, ci, n, energy):
  return dict(case=case, test_accuracy=acc, ci95=ci, n_seeds=n, energy_per_example_j=energy,
              memory_bytes=1)


def test_tie_wording_names_the_rule_of_each_pair():
  # Two 3-seed cases tied by their intervals, and a one-seed case elsewhere in the budget:
  # today the text says the tie is 'equal mean accuracy, as one seed gives ...'.
  cases = stats.aggregate(
      [run('A', s, a, energy_uj=2, mem_mib=1) for s, a in enumerate((0.89, 0.90, 0.91))]
      + [run('B', s, a, energy_uj=1, mem_mib=1) for s, a in enumerate((0.88, 0.89, 0.90))]
      + [run('C', 0, 0.5, energy_uj=1, mem_mib=1)])
  rec = recommend.recommend(cases)
  assert rec['pick']['case'] == 'A' and [e['case'] for e in rec['tied']] == ['B']
  text = recommend.format_recommendation(rec)
  assert ('Statistically tied with it (overlapping 95 % confidence intervals of the mean), '
          'cheapest first: B 89.00 %') in text
  assert rec['tied'][0]['tie_rule'] == recommend.OVERLAP
  assert 'equal mean accuracy' not in text.split('\n')[2]
  assert 'A case with one seed ties only at an equal mean accuracy' in text  # A against C
  # A one-seed case with A's mean: tied by equal means, on its own line.
  cases += stats.aggregate([run('D', 0, 0.90, energy_uj=3, mem_mib=1)])
  rec = recommend.recommend(cases)
  assert rec['pick']['case'] == 'A' and [(e['case'], e['tie_rule']) for e in rec['tied']] == [
      ('B', recommend.OVERLAP), ('D', recommend.EQUAL_MEANS)]
  text = recommend.format_recommendation(rec)
  assert 'Statistically tied with it (equal mean accuracy, as one seed gives no confidence ' \
         'interval), cheapest first: D 90.00 %' in text
  # Two 3-seed cases, not tied: the text names the interval rule only.
  cases = stats.aggregate(
      [run('A', s, a, energy_uj=2, mem_mib=1) for s, a in enumerate((0.89, 0.90, 0.91))]
      + [run('B', s, a, energy_uj=1, mem_mib=1) for s, a in enumerate((0.59, 0.60, 0.61))])
  text = recommend.format_recommendation(recommend.recommend(cases))
  assert ('No other case within the budget is tied with it (overlapping 95 % confidence '
          'intervals of the mean).') in text and 'one seed' not in text
  assert recommend.tie_rule(_entry('x', 0.9, None, 1, 1), _entry('y', 0.9, [0.8, 1], 3, 1)) == (
      recommend.EQUAL_MEANS)


def _facts(cases, seeds):
  return dict(fingerprint='f' * 64, seeds=seeds, cases=cases, num_classes=2, train_examples=10,
              test_examples=10, data={}, run_fingerprints={
                  case_lib.run_key(c, s): 'f' * 64 for c in cases for s in seeds})


def _gather_workdir(tmp_path):
  """A launch's workdir: records of ('a', 0), ('a', 1), ('b', 0); ('b', 1) missing."""
  w = str(tmp_path / 'w')
  for r in (run('a', 0, 0.9, energy_uj=9, mem_mib=9), run('a', 1, 0.91, energy_uj=9, mem_mib=9),
            run('b', 0, 0.99, energy_uj=1, mem_mib=1)):
    layout.save_done(w, case_lib.run_key(r['case'], r['seed']), r, 'f' * 64)
  c = base.get_config()
  c.budget_memory, c.max_energy_per_example_j = 'xla', 1.0
  return w, c


def test_gather_reports_the_launchers_failed_runs(tmp_path):
  w, c = _gather_workdir(tmp_path)
  s = job_lib.gather(c, w, _facts(['a', 'b'], [0, 1]), 1.0,
                      failed=[dict(case='b', seed=1, reason='job 5 FAILED: boom')])
  b = by_case(s)['b']
  assert b['status'] == 'failed' and (b['n_seeds'], b['n_seeds_planned']) == (1, 2)
  assert b['on_pareto_front'] is False and s['recommendation']['pick']['case'] == 'a'
  assert json.loads((tmp_path / 'w' / 'summary.json').read_text())['failed_runs'] == [
      dict(case='b', seed=1, reason='job 5 FAILED: boom')]


def test_gather_job_finds_failed_runs_in_the_book(tmp_path):
  """Without the launcher's list (the gather job of a launch that did not wait), a run with no
  record whose latest job ended with an error is failed; one with no job is missing."""
  w, c = _gather_workdir(tmp_path)
  book = jobs.Book(w)
  entry = book.add(jobs.Task('case', 1, 'b'), '4242', 'local', str(tmp_path / 'sub'))
  book.save()
  path = submitit_utils.JobPaths(entry['folder'], '4242').result_pickle
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'wb') as f:
    pickle.dump(('error', 'Traceback (most recent call last):\nRuntimeError: out of memory'), f)
  s = job_lib.gather(c, w, _facts(['a', 'b', 'c'], [0, 1]), 1.0)
  assert s['failed_runs'] == [dict(case='b', seed=1,
                                   reason='job 4242 FAILED: RuntimeError: out of memory')]
  assert by_case(s)['b']['status'] == 'failed'
  assert by_case(s)['c']['status'] == 'incomplete' and by_case(s)['c']['n_seeds'] == 0
