"""Energy with memory traffic, the choice of energy, the energy meters and their correlations.

docs/accounting.md "Memory traffic" and "Measured energy" say what is computed; the records'
fields against a real sweep are in tests/test_summary_fields.py and tests/test_configs.py.
"""

import random
import sys
import types

import ml_collections
import pytest
from scipy import stats as scipy_stats

from tljax.accounting import meters
from tljax.accounting import traffic
from tljax.decision import console
from tljax.decision import measured
from tljax.decision import pareto
from tljax.decision import recommend
from tljax.decision import stats

UJ = 1e-6
MIB = 2 ** 20


class FakeCounter:
  """A meter's counter at `power_w` while idle, `busy_w` while `busy`, over a fake clock that
  only sleep() and work() move."""

  def __init__(self, power_w=40.0, busy_w=290.0):
    self.t, self.j, self.power_w, self.busy_w = 0.0, 0.0, power_w, busy_w

  def clock(self):
    return self.t

  def sleep(self, seconds):
    self.t += seconds
    self.j += self.power_w * seconds

  def work(self, seconds):
    self.t += seconds
    self.j += self.busy_w * seconds

  def read_j(self):
    return self.j


@pytest.fixture
def fake(monkeypatch):
  f = FakeCounter()
  monkeypatch.setattr(meters, 'clock', f.clock)
  monkeypatch.setattr(meters, 'sleep', f.sleep)
  monkeypatch.setitem(meters.COUNTERS, 'nvml', lambda: meters.Counter('fake nvml', f.read_j))
  meters.reset()
  yield f
  meters.reset()


def _config(**fields):
  return ml_collections.ConfigDict(dict(dict(energy_meter='nvml', energy_idle_s=5.0,
                                             dry_run=False), **fields))


def test_meter_subtracts_the_idle_power_measured_before(fake):
  config = _config()
  meter = meters.get(config)
  assert meter.idle_power_w == pytest.approx(40.0) and fake.t == 5.0  # 200 J over 5 s
  assert meters.get(config) is meter  # measured once per process
  with meters.measuring(config) as m:
    fake.work(10.0)  # 2,900 J, of which 400 J idle
  assert (m.seconds, m.start_step) == (10.0, 0)
  assert m.joules == pytest.approx(2500.0)
  rec = meters.record_fields(m, steps=50, batch_size=10)
  assert rec == dict(energy_meter='fake nvml', idle_power_w=pytest.approx(40.0),
                     measured_energy_j=pytest.approx(2500.0),
                     measured_energy_per_example_j=pytest.approx(5.0))


def test_a_resumed_run_counts_only_the_steps_it_measured(fake):
  class Ckpt:
    def latest_step(self):
      return 30

  with meters.measuring(_config(), Ckpt()) as m:
    fake.work(2.0)
  rec = meters.record_fields(m, steps=50, batch_size=10)  # 20 steps of 10 examples measured
  assert m.start_step == 30
  assert rec['measured_energy_per_example_j'] == pytest.approx((2.0 * 250.0) / 200)


def test_no_meter_off_or_in_a_dry_run(fake):
  for config in (_config(energy_meter='off'), _config(dry_run=True)):
    with meters.measuring(config) as m:
      fake.work(1.0)
    assert m is None
    assert meters.record_fields(m, 5, 2) == dict.fromkeys(meters.RECORD_FIELDS)
  assert fake.t == 1.0 + 1.0  # no idle measurement


def test_rapl_counters_are_summed_and_unwrapped(tmp_path, monkeypatch):
  for name, uj in (('intel-rapl:0', 900), ('intel-rapl:1', 100), ('intel-rapl:0:0', 5)):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'energy_uj').write_text(f'{uj}\n')
    (tmp_path / name / 'max_energy_range_uj').write_text('1000\n')
  counter = meters.rapl_counter(str(tmp_path))
  assert counter.name == 'rapl (2 packages)'  # intel-rapl:0:0 is inside package 0
  assert counter.read_j() == 0.0
  (tmp_path / 'intel-rapl:0' / 'energy_uj').write_text('50\n')  # wrapped: +150 µJ
  (tmp_path / 'intel-rapl:1' / 'energy_uj').write_text('400\n')  # +300 µJ
  assert counter.read_j() == pytest.approx(450e-6)
  with pytest.raises(meters.Unavailable, match=r'^RAPL counters not readable \(.*energy_uj'):
    meters.rapl_counter(str(tmp_path / 'nothing'))
  monkeypatch.setattr(meters, 'RAPL_ROOT', str(tmp_path / 'nothing'))
  monkeypatch.setattr(meters, '_kind', lambda mode: 'rapl')
  assert meters.make('auto', 1.0) is None  # one logged line, no meter
  with pytest.raises(ValueError, match=r"^config.energy_meter='rapl': RAPL counters not"):
    meters.make('rapl', 1.0)


def test_nvml_reads_millijoules_of_the_visible_gpus(monkeypatch):
  fake = types.ModuleType('pynvml')
  fake.NVMLError = type('NVMLError', (Exception,), {})
  fake.nvmlInit = lambda: None
  fake.nvmlDeviceGetCount = lambda: 4
  fake.nvmlDeviceGetHandleByIndex = lambda i: i
  fake.nvmlDeviceGetHandleByUUID = lambda u: {'GPU-b': 3}[u]
  fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: 1000 * (h + 1)  # mJ
  monkeypatch.setitem(sys.modules, 'pynvml', fake)
  monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
  assert meters.nvml_counter().read_j() == pytest.approx(1 + 2 + 3 + 4)
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '1,GPU-b')
  counter = meters.nvml_counter()
  assert (counter.name, counter.read_j()) == ('nvml (2 GPUs)', pytest.approx(2 + 4))
  monkeypatch.setitem(sys.modules, 'pynvml', None)  # not installed
  with pytest.raises(meters.Unavailable, match=r'pynvml is not installed \(pip install '
                     r'nvidia-ml-py\)'):
    meters.nvml_counter()


def test_spearman_is_scipys_with_ties():
  rng = random.Random(0)
  for n in (3, 5, 11):
    x = [rng.choice([1, 2, 3, 4]) for _ in range(n)]
    y = [rng.random() for _ in range(n)]
    want = scipy_stats.spearmanr(x, y).statistic
    assert measured.spearman(x, y) == pytest.approx(want, abs=1e-12)
  assert measured.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert measured.spearman([1, 1, 1], [1, 2, 3]) is None  # constant: undefined
  assert measured.spearman([1, 2], [1, 2]) is None  # too few cases


def _case(name, acc, mac_uj, memory_uj, mem_mib, measured_uj=None, edge=None):
  return dict(case=name, status='ok', test_accuracy_mean=acc, test_accuracy=acc, n_seeds=1,
              energy_per_example_j=mac_uj * UJ, energy_with_memory_per_example_j=memory_uj * UJ,
              train_memory_bytes=int(mem_mib * MIB), edge_traffic_bytes_per_step=edge,
              measured_energy_per_example_j_mean=None if measured_uj is None else measured_uj * UJ)


# MAC energy ranks bias:23 below last:17; with memory, bias:23 moves more bytes and costs more.
#   case      acc    MAC uJ  with memory uJ  measured uJ  edge bytes
#   last:1    0.80   100     250             30           2.2e6
#   last:9    0.90   140     600             50           7e6
#   bias:23   0.93   225     1300            90           9e6
#   last:17   0.94   260     1100            80           12e6
CASES = [_case('last:1', 0.80, 100, 250, 10, 30, 2.2e6),
         _case('last:9', 0.90, 140, 600, 12, 50, 7e6),
         _case('bias:23', 0.93, 225, 1300, 20, 90, 9e6),
         _case('last:17', 0.94, 260, 1100, 20, 80, 12e6)]


def test_the_front_and_the_recommendation_read_either_energy():
  assert pareto.front(CASES) == {'last:1', 'last:9', 'bias:23', 'last:17'}
  assert pareto.front(CASES, energy='memory') == {'last:1', 'last:9', 'last:17'}
  budget = dict(max_energy_per_example_j=240 * UJ)
  assert recommend.recommend(CASES, **budget)['pick']['case'] == 'bias:23'
  rec = recommend.recommend(CASES, max_energy_per_example_j=1200 * UJ, energy='memory')
  assert rec['pick']['case'] == 'last:17' and rec['budget']['energy'] == 'memory'
  assert rec['pick']['energy_per_example_j'] == 1100 * UJ
  text = recommend.format_recommendation(rec)
  assert 'Budget: energy with memory <= 1.2 mJ/example.' in text
  assert 'Recommended: last:17, test accuracy 94.00 % (1 seed), 1.1 mJ/example with memory' in text
  assert recommend.budget_of(dict(budget_energy='memory'))['energy'] == 'memory'
  with pytest.raises(ValueError, match=r"^energy='flops': must be one of 'mac', 'memory'"):
    recommend.recommend(CASES, energy='flops')
  with pytest.raises(ValueError, match=r"case 'x' has no energy_with_memory_per_example_j \(this "
                     r'summary has no memory traffic'):
    pareto.front([dict(test_accuracy=0.9, case='x', energy_per_example_j=1.0,
                       train_memory_bytes=1)], energy='memory')


def test_rank_correlations_of_the_measured_energy():
  corr = measured.rank_correlations(CASES)
  assert corr['n_cases'] == 4 and corr['cases'] == [c['case'] for c in CASES]
  # The meter ranks last:1 < last:9 < last:17 < bias:23: as the energy with memory does.
  assert corr['spearman'] == dict(mac=pytest.approx(0.8), memory=pytest.approx(1.0),
                                  edge_traffic=pytest.approx(0.8))
  assert measured.rank_correlations(CASES[:2]) is None
  assert measured.describe(corr) == (
      'Measured energy against the models, Spearman rank correlation over 4 cases: MAC energy '
      '0.80, energy with memory 1.00, edge traffic 0.80.')


def test_the_table_shows_both_energies_and_the_measured_one():
  summary = dict(cases=[dict(c, n_seeds_planned=1, test_accuracy_values=[c['test_accuracy']])
                        for c in CASES], config=dict(budget_energy='memory'))
  summary['cases'] = stats.cases_of(summary, energy='memory')
  lines = console.table(summary).splitlines()
  assert 'MAC energy µJ/example' in lines[0] and 'energy with memory mJ/example' in lines[0]
  assert 'measured energy µJ/example' in lines[0]
  row = next(l for l in lines if l.startswith('bias:23'))
  assert ' 225 ' in row and ' 1.3 ' in row and ' 90 ' in row and not row.endswith('*')
  assert ('on the Pareto front (mean test accuracy up, energy with memory and XLA train memory '
          'down)') in '\n'.join(lines)
  assert lines[-1].startswith('Measured energy against the models')
  plain = console.table(dict(cases=[{k: v for k, v in c.items() if 'measured' not in k}
                                    for c in summary['cases']]))
  assert 'measured' not in plain and 'MAC energy' in plain


def test_memory_energy_and_edge_traffic_rules():
  assert traffic.DEFAULT_E_BYTE_J == pytest.approx(1.6e-10)  # 640 pJ per 32-bit DRAM read
  assert traffic.SRAM_E_BYTE_J == pytest.approx(1.25e-12)  # 5 pJ per 32-bit 8 KB SRAM read
  assert traffic.memory_energy_j(1e6) == pytest.approx(1.6e-4)
  # Three layers: a frozen conv (a), a trainable conv (b), a trainable dense (c), at batch 2.
  shapes = {'a': {'kernel': (3, 3, 1, 4)}, 'b': {'kernel': (3, 3, 4, 4), 'bias': (4,)},
            'c': {'kernel': (16, 2)}}
  variables = {'params': {l: {p: types.SimpleNamespace(shape=s) for p, s in ps.items()}
                          for l, ps in shapes.items()}}
  memory = dict(batch_size=2, frozen_dtype='int8', weights_bytes=1000, activation_bytes=300,
                gradient_bytes=200, optimizer_bytes=400, trainable_weights_bytes=200,
                layers=[dict(name=n) for n in ('a', 'relu', 'b', 'c')])
  edge = traffic.edge_traffic(memory, variables, {'b': ('kernel', 'bias'), 'c': ('kernel',)},
                              (4, 4, 1))
  assert edge == dict(input_bytes=4 * 2 * 16, weights_read_bytes=1000 + 4 * 16 * 2,
                      activations_bytes=600, gradients_bytes=400, optimizer_bytes=800,
                      weights_updated_bytes=400, total_bytes=128 + 1128 + 600 + 400 + 800 + 400,
                      batch_size=2, frozen_dtype='int8')


def test_a_sweep_summary_decides_on_the_configs_budget_energy():
  runs = [dict(case=c['case'], seed=0, status='ok', test_accuracy=c['test_accuracy'],
               test_loss=0.1, **{f: c[f] for f in ('energy_per_example_j', 'train_memory_bytes',
                                                   'energy_with_memory_per_example_j')})
          for c in CASES]
  got = {}
  for energy in ('mac', 'memory'):
    s = recommend.decide(dict(runs=runs, config=dict(max_energy_per_example_j=250 * UJ,
                                                     budget_energy=energy)))
    got[energy] = (s['recommendation']['pick']['case'],
                   {c['case'] for c in s['cases'] if c['on_pareto_front']})
  # Within 250 uJ of MAC energy bias:23 is the most accurate; with memory only last:1 fits.
  assert got['mac'] == ('bias:23', {'last:1', 'last:9', 'bias:23', 'last:17'})
  assert got['memory'] == ('last:1', {'last:1', 'last:9', 'last:17'})
