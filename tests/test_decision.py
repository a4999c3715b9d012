"""Seed statistics, the Pareto front, the recommendation, its CLI, the figures and the table."""

import json
import math
import os
import subprocess
import sys

from absl import flags
from absl import logging as absl_logging
import pytest

from tljax.decision import console
from tljax.decision import figures
from tljax.decision import pareto
from tljax.decision import recommend
from tljax.decision import stats
from tljax import recommend as recommend_cli
from tljax.sweep import outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T2 = 4.302652729911275  # Student t 0.975 quantile, 2 degrees of freedom (tables)
T1 = 12.706204736174703  # ... 1 degree of freedom
MIB = 2 ** 20
UJ = 1e-6


def run(case, seed, acc, *, energy_uj, mem_mib, loss=0.3, wall=10.0, status='ok', **extra):
  """A run record with the fields the decision reads (costs the same for every seed)."""
  return dict(case=case, seed=seed, status=status, trainable_params=1000,
              test_accuracy=acc if status == 'ok' else None,
              test_loss=loss if status == 'ok' else None,
              energy_per_example_j=energy_uj * UJ, thesis_energy_per_example_j=energy_uj * UJ / 50,
              train_memory_bytes=int(mem_mib * MIB), wall_s=wall,
              diverged_at_step=None if status == 'ok' else 17, **extra)


def three_seeds(case, accs, energy_uj, mem_mib):
  return [run(case, s, a, energy_uj=energy_uj, mem_mib=mem_mib) for s, a in enumerate(accs)]


# Hand-worked budget scenario. Each case's accuracies are mean -+ 0.01 over 3 seeds: std 0.01,
# 95 % CI half-width T2 * 0.01 / sqrt(3) = 0.02484.
#   case      mean   95 % CI            energy  XLA mem
#   last:1    0.81   [0.7852, 0.8348]   100 uJ  10 MiB   breaks min_accuracy 0.85
#   norm:23   0.86   [0.8352, 0.8848]    90 uJ   8 MiB   in budget, CI below pick's: not tied
#   last:4    0.89   [0.8652, 0.9148]   150 uJ  16 MiB   in budget, tied (0.9148 >= 0.9052)
#   last:9    0.91   [0.8852, 0.9348]   120 uJ  12 MiB   in budget, tied
#   last:11   0.93   [0.9052, 0.9548]   180 uJ  15 MiB   in budget: the pick
#   last:17   0.95                      260 uJ  31 MiB   cheapest more accurate: energy + memory
#   last:23   0.955                     340 uJ  60 MiB
#   bias:23   seed 1 diverged            50 uJ   4 MiB   never picked
# Budget: 200 uJ/example, 20 MiB, accuracy >= 0.85.
CASES = [('last:1', 0.81, 100, 10), ('norm:23', 0.86, 90, 8), ('last:4', 0.89, 150, 16),
         ('last:9', 0.91, 120, 12), ('last:11', 0.93, 180, 15), ('last:17', 0.95, 260, 31),
         ('last:23', 0.955, 340, 60)]
BUDGET = dict(max_energy_per_example_j=200 * UJ, max_train_memory_mb=20, min_accuracy=0.85)


def scenario_runs():
  runs = []
  for case, m, e, mem in CASES:
    runs += three_seeds(case, [m - 0.01, m, m + 0.01], e, mem)
  runs += [run('bias:23', 0, 0.80, energy_uj=50, mem_mib=4),
           run('bias:23', 1, None, energy_uj=50, mem_mib=4, status='diverged'),
           run('bias:23', 2, 0.84, energy_uj=50, mem_mib=4)]
  return runs


def scenario_summary(**config):
  runs = scenario_runs()
  return recommend.decide(dict(name='t', runs=runs, config=dict(BUDGET, budget_memory='xla',
                                                                  **config)))


# --- stats.aggregate --------------------------------------------------------------------------

def test_aggregate_three_seeds_by_hand():
  runs = [run('last:9', 2, 0.94, loss=0.20, wall=12.0, energy_uj=140, mem_mib=12),
          run('last:9', 0, 0.90, loss=0.30, wall=10.0, energy_uj=140, mem_mib=12),
          run('last:9', 1, 0.92, loss=0.25, wall=11.0, energy_uj=140, mem_mib=12)]
  (c,) = stats.aggregate(runs)
  assert c['case'] == 'last:9' and c['seeds'] == [0, 1, 2] and c['n_seeds'] == 3
  assert c['status'] == 'ok' and 'seed' not in c
  # accuracy: mean 0.92; std sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02; half = t * 0.02 / sqrt(3)
  half = T2 * 0.02 / math.sqrt(3)
  assert half == pytest.approx(0.049683, abs=1e-6)
  assert c['test_accuracy_mean'] == c['test_accuracy'] == pytest.approx(0.92)
  assert c['test_accuracy_std'] == pytest.approx(0.02)
  assert c['test_accuracy_ci95_low'] == pytest.approx(0.92 - half, rel=1e-9)
  assert c['test_accuracy_ci95_high'] == pytest.approx(0.92 + half, rel=1e-9)
  assert c['test_accuracy_values'] == [0.90, 0.92, 0.94]
  # loss: mean 0.25, std 0.05, half = t * 0.05 / sqrt(3) = 0.124207
  assert c['test_loss'] == pytest.approx(0.25) and c['test_loss_std'] == pytest.approx(0.05)
  assert c['test_loss_ci95_high'] - 0.25 == pytest.approx(0.124207, abs=1e-6)
  # costs copied once, seed-dependent numbers as means (wall also summed)
  assert c['energy_per_example_j'] == 140 * UJ and c['train_memory_bytes'] == 12 * MIB
  assert c['wall_s_mean'] == pytest.approx(11.0) and c['wall_s_total'] == pytest.approx(33.0)
  assert 'wall_s' not in c and c['on_pareto_front'] is True


def test_aggregate_one_seed_and_a_diverged_seed():
  runs = [run('last:1', 0, 0.7, energy_uj=100, mem_mib=10),
          run('bias:23', 0, 0.80, energy_uj=50, mem_mib=4),
          run('bias:23', 1, None, energy_uj=50, mem_mib=4, status='diverged'),
          run('bias:23', 2, 0.84, energy_uj=50, mem_mib=4)]
  one, div = stats.aggregate(runs)  # the runs' case order
  assert one['case'] == 'last:1' and one['test_accuracy_mean'] == 0.7
  assert one['test_accuracy_std'] is None and one['test_accuracy_ci95_low'] is None
  assert div['status'] == 'diverged (seed 1)'
  assert div['test_accuracy_values'] == [0.80, None, 0.84]
  # statistics over the 2 seeds that finished: std sqrt(2 * 0.02^2 / 1), t(0.975, 1)
  assert div['test_accuracy_mean'] == pytest.approx(0.82)
  assert div['test_accuracy_std'] == pytest.approx(0.02 * math.sqrt(2))
  assert div['test_accuracy_ci95_high'] == pytest.approx(0.82 + T1 * 0.02, rel=1e-9)
  assert div['diverged_at_step_values'] == [None, 17, None]
  assert div['on_pareto_front'] is False and one['on_pareto_front'] is True


def test_aggregate_rejects_a_repeated_seed_and_a_missing_seed():
  with pytest.raises(ValueError, match=r"case 'a' has seeds \[0, 0\]"):
    stats.aggregate([run('a', 0, 0.5, energy_uj=1, mem_mib=1)] * 2)
  with pytest.raises(ValueError, match='run 0 has no seed'):
    stats.aggregate([dict(case='a', test_accuracy=0.5)])


# --- pareto.front -----------------------------------------------------------------------------

def test_front_dominated_and_tied_cases():
  def case(name, acc, e, mem, status='ok'):
    return dict(case=name, status=status, test_accuracy_mean=acc, energy_per_example_j=e,
                train_memory_bytes=mem, device_train_memory_bytes=100 - mem)
  cases = [case('A', 0.90, 1.0, 10), case('D', 0.90, 1.0, 10),  # equal: both stay
           case('B', 0.95, 2.0, 20), case('C', 0.89, 1.5, 15),  # C: worse than A in all
           case('E', 0.97, 3.0, 5),  # the most accurate, least memory
           case('G', 0.95, 2.0, 25),  # as B but more memory: dominated
           case('F', 0.99, 0.1, 1, status='diverged (seed 0)')]  # never on it
  assert pareto.front(cases) == {'A', 'D', 'B', 'E'}
  # with the device memory (100 - XLA's) G beats B and C is no longer dominated by A
  assert pareto.front(cases, memory='device') == {'A', 'D', 'G', 'E', 'C'}
  with pytest.raises(ValueError, match="memory='gpu': must be one of 'xla', 'device'"):
    pareto.front(cases, memory='gpu')
  del cases[0]['device_train_memory_bytes']
  with pytest.raises(ValueError, match="case 'A' has no device_train_memory_bytes"):
    pareto.front(cases, memory='device')


# --- recommend.recommend ----------------------------------------------------------------------

def test_recommendation_worked_by_hand():
  cases = stats.aggregate(scenario_runs())
  rec = recommend.recommend(cases, **BUDGET)
  assert rec['pick']['case'] == 'last:11'
  assert rec['pick']['test_accuracy'] == pytest.approx(0.93)
  assert rec['pick']['ci95'] == pytest.approx([0.93 - T2 * 0.01 / math.sqrt(3),
                                               0.93 + T2 * 0.01 / math.sqrt(3)])
  assert [e['case'] for e in rec['tied']] == ['last:9', 'last:4']  # cheapest first
  b = rec['next_better']
  assert b['case'] == 'last:17' and b['accuracy_gain'] == pytest.approx(0.02)
  assert b['energy_per_example_j'] == 260 * UJ and b['memory_bytes'] == 31 * MIB
  assert b['breaks'] == ['max_energy_per_example_j', 'max_train_memory_mb']
  text = recommend.format_recommendation(rec)
  assert 'Recommended: last:11, test accuracy 93.00 % ± 2.48 (95 % CI, 3 seeds)' in text
  assert '180 µJ/example, 15.0 MiB XLA train memory' in text
  assert 'cheapest first: last:9 91.00 % at 120 µJ/example' in text
  assert '+2.00 points (95.00 %), 260 µJ/example, 31.0 MiB' in text
  assert 'breaks energy 260 µJ/example > 200 µJ/example; memory 31.0 MiB > 20 MiB' in text


def test_recommendation_nothing_meets_the_budget():
  cases = stats.aggregate(scenario_runs())
  rec = recommend.recommend(cases, max_energy_per_example_j=80 * UJ)  # only bias:23 (diverged)
  assert rec['pick'] is None and rec['tied'] == [] and rec['next_better'] is None
  assert rec['cheapest']['case'] == 'norm:23'
  assert rec['cheapest']['breaks'] == ['max_energy_per_example_j']
  text = recommend.format_recommendation(rec)
  assert 'No case meets the budget.' in text
  assert 'Cheapest case: norm:23, 90 µJ/example, 8.0 MiB' in text
  assert 'energy 90 µJ/example > 80 µJ/example' in text


def test_recommendation_one_seed_ties_are_equal_means():
  cases = stats.aggregate([run('a', 0, 0.9, energy_uj=2, mem_mib=1),
                           run('b', 0, 0.9, energy_uj=1, mem_mib=1),
                           run('c', 0, 0.899, energy_uj=0.5, mem_mib=1)])
  rec = recommend.recommend(cases)
  assert rec['pick']['case'] == 'b' and [e['case'] for e in rec['tied']] == ['a']
  assert rec['next_better'] is None
  text = recommend.format_recommendation(rec)
  assert 'equal mean accuracy, as one seed gives no confidence interval' in text
  assert 'Budget: no limits.' in text


def test_recommendation_bad_budget_values():
  with pytest.raises(ValueError, match=r'min_accuracy=95: must be a fraction in \[0, 1\]'):
    recommend.recommend([], min_accuracy=95)
  with pytest.raises(ValueError, match='max_train_memory_mb=-1: must be a number >= 0'):
    recommend.recommend([], max_train_memory_mb=-1)


def test_decide_fills_cases_recommendation_and_marks():
  s = scenario_summary()
  assert [c['case'] for c in s['cases']] == [c[0] for c in CASES] + ['bias:23']
  assert s['recommendation']['pick']['case'] == 'last:11'
  assert [c['case'] for c in s['cases'] if c['recommended']] == ['last:11']
  assert 'recommendation' not in recommend.decide(dict(runs=scenario_runs(), config={}))


# --- the CLI ----------------------------------------------------------------------------------

def write_summary(tmp_path, summary):
  (tmp_path / 'summary.json').write_text(json.dumps(summary))
  return str(tmp_path)


def cli(capsys, *args):
  rc = recommend_cli.run_cli(['recommend', *args])
  out, err = capsys.readouterr()
  return rc, out, err


def test_cli_uses_the_runs_config_and_flags(tmp_path, capsys):
  d = write_summary(tmp_path, scenario_summary())
  rc, out, _ = cli(capsys, f'--workdir={d}')
  assert rc == 0 and 'Recommended: last:11' in out
  rc, out, _ = cli(capsys, f'--workdir={d}', '--max_energy_per_example_j=1.3e-4',
                   '--max_train_memory_mb=0', '--min_accuracy=0')
  assert rc == 0 and 'Recommended: last:9' in out  # 0.91, 120 uJ: within 130 uJ


def test_cli_old_one_seed_summary(tmp_path, capsys):
  old = [dict(run(n, 0, a, energy_uj=e, mem_mib=m), case=i) for i, (n, a, e, m) in
         enumerate(CASES, 1)]
  for r in old:
    del r['seed']
  d = write_summary(tmp_path, dict(seed=0, cases=old, config={}))
  rc, out, _ = cli(capsys, f'--workdir={d}', '--max_energy_per_example_j=2e-4')
  assert rc == 0 and 'Recommended: 5, test accuracy 93.00 % (1 seed)' in out


@pytest.mark.parametrize('args, message', [
    (['--min_accuracy=abc'], 'flag --min_accuracy=abc: could not convert'),
    (['--max_train_memory_mb=-3'], 'flag --max_train_memory_mb=-3'),
    (['--memory=gpu'], 'flag --memory=gpu: value should be one of <xla|device>'),
    (['--memory=device'], "case 'last:1' has no device_train_memory_bytes"),
    ([], '--workdir is required'),
])
def test_cli_bad_flags(tmp_path, capsys, args, message):
  d = write_summary(tmp_path, scenario_summary())
  rc, out, err = cli(capsys, *([f'--workdir={d}'] if args else []), *args)
  assert rc == 1 and out == '' and err.startswith(f'tljax: error: {message}')
  assert err.count('\n') == 1


def test_cli_missing_and_corrupt_summary(tmp_path, capsys):
  rc, _, err = cli(capsys, f'--workdir={tmp_path / "nope"}')
  assert rc == 1 and err == f'tljax: error: --workdir={tmp_path / "nope"}: no such directory\n'
  rc, _, err = cli(capsys, f'--workdir={tmp_path}')
  assert rc == 1 and err.startswith(f'tljax: error: no summary.json in {tmp_path}')
  (tmp_path / 'summary.json').write_text('{"cases": [')
  rc, _, err = cli(capsys, f'--workdir={tmp_path}')
  assert rc == 1 and 'is not a readable JSON summary' in err and err.count('\n') == 1


def test_cli_as_a_module(tmp_path):
  d = write_summary(tmp_path, scenario_summary())
  env = dict(os.environ, PYTHONPATH=ROOT)
  bad = subprocess.run([sys.executable, '-m', 'tljax.recommend', f'--workdir={d}',
                        '--min_accuracy=1.5'], env=env, capture_output=True, text=True,
                       check=False)
  assert bad.returncode == 1 and bad.stdout == '' and 'Traceback' not in bad.stderr
  assert bad.stderr == ('tljax: error: flag --min_accuracy=1.5: 1.5 is not a number in the '
                        'range [0, 1]\n')


# --- figures and the console table ------------------------------------------------------------

@pytest.mark.parametrize('seeds', [1, 3])
def test_figures_written(tmp_path, seeds):
  runs = [r for r in scenario_runs() if r['seed'] < seeds]
  runs.append(run('block:block2', 0, None, energy_uj=70, mem_mib=9, status='diverged'))
  s = recommend.decide(dict(runs=runs, config=BUDGET))
  for write, name in ((figures.write_figure, 'figure.png'), (figures.write_pareto, 'pareto.png')):
    write(str(tmp_path / name), s['cases'], f'{seeds} seeds')
    data = (tmp_path / name).read_bytes()
    assert data.startswith(b'\x89PNG') and len(data) > 10_000
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_figures_are_drawn_at_most_once_a_minute_between_runs_and_always_at_the_end(tmp_path):
  assert outputs.figures_due(None) and outputs.FIGURES_EVERY_S == 60.0
  assert not outputs.figures_due(100.0, now=159.9) and outputs.figures_due(100.0, now=160.0)
  s = recommend.decide(dict(runs=scenario_runs(), config=dict(
      BUDGET, budget_memory='xla', source_classes=[0], target_classes=[1])))
  s.update(name='t', model='small_cnn', source_dataset='digits', target_dataset='digits',
           dry_run=False, seeds=[0, 1, 2])
  outputs.write(str(tmp_path), s, draw=False)  # between runs, not due: the numbers only
  assert sorted(os.listdir(tmp_path)) == ['results.csv', 'runs.csv', 'summary.json']
  outputs.write(str(tmp_path), s)  # the sweep's end
  assert {'figure.png', 'pareto.png'} <= set(os.listdir(tmp_path))


def test_console_table_marks():
  s = scenario_summary()
  s['cases'][0]['device_train_memory_bytes'] = 3 * MIB
  lines = console.table(s, figures=('W/figure.png', 'W/pareto.png')).splitlines()
  rows = {l.split()[0].rstrip(':'): l for l in lines[2:11]}
  assert 'energy µJ/example' in lines[0] and 'XLA train MiB' in lines[0]
  assert rows['last:11'].endswith('*  <- pick')
  assert '93.00 ± 2.48 (3)' in rows['last:11']
  assert rows['last:23'].rstrip().endswith('*')  # the most accurate: on the front
  assert not rows['last:4'].rstrip().endswith('*')  # last:9 is cheaper, smaller and better
  assert rows['bias:23'].startswith('bias:23: diverged (seed 1)')
  assert '82.00 ± 25.41 (2/3)' in rows['bias:23']  # 2 seeds finished: half-width t(1) 0.0283
  assert ' 3.0 ' in rows['last:1'] and ' - ' in rows['norm:23']  # device MiB or '-'
  assert ' 30.0 ' in rows['last:11']  # wall s summed over 3 seeds
  assert 'Recommended: last:11' in '\n'.join(lines)
  assert lines[-1] == 'Figures: W/figure.png, W/pareto.png'


def test_quiet_libraries_respects_verbosity():
  handler = absl_logging.get_absl_handler()

  def ours():
    return [f for f in handler.filters if isinstance(f, console._LibraryInfoFilter)]  # pylint: disable=protected-access

  for f in ours():
    handler.removeFilter(f)
  try:
    flags.FLAGS(['prog', '--verbosity=1'])
    console.quiet_libraries()
    assert not ours()
    flags.FLAGS.unparse_flags()
    console.quiet_libraries()
    assert len(ours()) == 1
  finally:
    flags.FLAGS.unparse_flags()
    absl_logging.set_verbosity(absl_logging.INFO)
