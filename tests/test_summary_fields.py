"""Every field of a produced summary against its formula, and results.csv against the record."""

import csv
import json
import math

import jax
import numpy as np
import pytest

from conftest import shrunk_default
from tljax.accounting import meters
from tljax.runtime import report
from tljax.sweep import runner
from tljax.training import compiled

CASES = (1, 9, 23)
# Forward MACs per example of the small CNN's weighted layers (digits 5-9: 5 classes), by the
# textbook formula: conv H*W*9*Cin*Cout (SAME padding), dense in*out.
MACS = {
    'conv2d': 32 * 32 * 9 * 1 * 32, 'conv2d_1': 32 * 32 * 9 * 32 * 32,
    'conv2d_2': 16 * 16 * 9 * 32 * 64, 'conv2d_3': 16 * 16 * 9 * 64 * 64,
    'conv2d_4': 8 * 8 * 9 * 64 * 128, 'conv2d_5': 8 * 8 * 9 * 128 * 128,
    'dense': 2048 * 128, 'dense_1': 128 * 5,
}
# Per-example float32 bytes of the cached prefix output: case 1 caches dense's 128 features
# (after batch_normalization_6 and dropout_3), case 9 conv2d_5's input, 8x8x128.
PREFIX_FEATURES = {'last:1': 128, 'last:9': 8 * 8 * 128}  # records name cases canonically


class ScriptedMeter:
  """An energy counter reading 10 n^2 J at its n-th read, on a clock that moves 1 s per call:
  the idle measurement (reads 0 and 1) gives 10 W, and the k-th run's span (reads 2k and 2k+1,
  1 s) 10 (4k + 1) J, 40 k J above idle."""

  def __init__(self):
    self.reads, self.calls = 0, 0

  def read_j(self):
    self.reads += 1
    return 10.0 * (self.reads - 1) ** 2

  def clock(self):
    self.calls += 1
    return float(self.calls - 1)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('fields')
  c = shrunk_default(tmp / 'cache')
  c.log_every_steps = 10  # the default config's
  c.device_xla_check = True  # the device memory fields' cross-check (test_device_memory_fields)
  c.prefix_cache_always = True  # the cached runs' fields (3 steps would never pay for a cache)
  c.cases = CASES
  c.energy_meter = 'nvml'  # a scripted counter (test_traffic_and_measured_energy_fields)
  fake = ScriptedMeter()
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(meters.COUNTERS, 'nvml', lambda: meters.Counter('scripted', fake.read_j))
    mp.setattr(meters, 'clock', fake.clock)
    mp.setattr(meters, 'sleep', lambda s: None)
    meters.reset()
    try:
      summary = runner.train_and_evaluate(c, str(tmp / 'w'))
    finally:
      meters.reset()
  with open(tmp / 'w' / 'runs.csv') as f:
    rows = list(csv.DictReader(f))
  return c, summary, rows


def _sizes(tree):
  return {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in tree.items()}


def test_params_counts_from_the_variables(run):
  config, summary, _ = run
  model = compiled.model_for(config, summary['num_classes'])
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 1))))
  params, stats = _sizes(shapes['params']), _sizes(shapes['batch_stats'])
  assert sum(params.values()) + sum(stats.values()) == 552_298 - (128 * 10 + 10) + (128 * 5 + 5)  # 5 classes
  for c in summary['runs']:
    assert c['trainable_params'] == sum(params.get(n, 0) for n in c['trainable_layer_names'])
    assert c['total_params'] == sum(params.values()) + sum(stats.values())
  assert summary['runs'][0]['trainable_params'] == 128 * 5 + 5


def test_thesis_energy_from_the_trainable_layers_forward_macs(run):
  config, summary, _ = run
  for c in summary['runs']:
    macs = sum(MACS.get(n, 0) for n in c['trainable_layer_names'])
    assert c['thesis_energy_per_example_j'] == pytest.approx(macs * config.e_mac_j, rel=1e-12)
    assert c['analytic_macs_per_example']['trainable_forward'] == macs
  assert summary['runs'][0]['thesis_energy_per_example_j'] == pytest.approx(128 * 5 * 3.2e-12)


def test_flops_and_energy_fields_from_their_formulas(run):
  config, summary, _ = run
  e = config.e_mac_j
  for c in summary['runs']:
    b, steps = c['batch_size'], c['steps']
    assert (b, steps) == (16, 3)
    assert c['train_flops_per_step'] == c['train_memory']['flops'] > 0
    assert c['train_flops_per_example'] == pytest.approx(c['train_flops_per_step'] / b)
    assert c['energy_per_example_j'] == pytest.approx(c['train_flops_per_example'] / 2 * e)
    assert c['energy_per_step_j'] == pytest.approx(c['train_flops_per_step'] / 2 * e)
    assert c['energy_total_j'] == pytest.approx(c['train_flops_per_step'] / 2 * e * steps)
    a = c['analytic_macs_per_example']
    assert a['total'] == a['forward'] + a['weight_grad'] + a['input_grad']
    assert a['forward'] == sum(MACS.values())
    assert c['analytic_train_flops_per_example'] == 2 * a['total']
    assert c['analytic_forward_flops_per_example'] == 2 * sum(MACS.values())
    assert c['xla_to_analytic_train_flops'] == pytest.approx(
        c['train_flops_per_example'] / c['analytic_train_flops_per_example'])
    assert c['examples_per_s'] == pytest.approx(steps * b / c['wall_s'])
    assert c['train_memory_bytes'] == c['train_memory']['memory_bytes'] > 0


def test_prefix_cache_and_compute_fields(run):
  _, summary, _ = run
  visited = 3 * 16  # one epoch of 3 steps of 16 distinct train examples
  for c in summary['runs']:
    eval_batch = min(128, c['test_examples'])
    eval_calls = math.ceil(c['test_examples'] / eval_batch)
    evaluation = c['forward_flops_per_example'] * eval_batch * eval_calls  # the whole model
    assert c['test_examples'] == summary['test_examples']
    d = c['prefix_cache_decision']
    assert d['example_passes'] == c['steps'] * c['batch_size'] == visited
    if not c['prefix_cache']:
      assert c['case'] == 'last:23' and c['prefix_cache_cut_layer'] is None
      assert d['decision'] == 'none' and d['cut_layer'] is None and 'no frozen layer' in d['reason']
      assert c['prefix_flops_total'] == 0 and c['cached_train_flops_per_step'] is None
      assert c['prefix_cache_examples'] == c['prefix_cache_bytes'] == 0
      assert c['compute_flops_total'] == pytest.approx(
          c['train_flops_per_step'] * c['steps'] + evaluation)
      continue
    assert d['decision'] == 'cache' and d['cut_layer'] == c['prefix_cache_cut_layer']
    assert c['prefix_cache_examples'] == d['examples_visited'] == visited
    assert c['prefix_cache_bytes'] == d['bytes'] == visited * PREFIX_FEATURES[c['case']] * 4
    assert c['prefix_cache_location'] == 'memory'
    assert 0 < c['cached_train_flops_per_step'] < c['train_flops_per_step']
    # The prefix ran over the visited train examples in batches of the train batch (16).
    assert c['prefix_flops_total'] == pytest.approx(3 * d['prefix_flops_per_example'] * 16)
    assert c['compute_flops_total'] == pytest.approx(
        c['prefix_flops_total'] + c['cached_train_flops_per_step'] * c['steps'] + evaluation)


def test_csvs_hold_every_scalar_field_of_the_records(run):
  """runs.csv: a row per (case, seed) record; results.csv: a row per case's statistics."""
  _, summary, rows = run
  with open(summary['config']['cache_dir'] + '/../w/results.csv') as f:
    cases = list(csv.DictReader(f))
  assert list(cases[0]) == report.csv_columns(summary['cases'])
  assert [r['case'] for r in cases] == ['last:1', 'last:9', 'last:23']
  assert [float(r['test_accuracy_mean']) for r in cases] == [
      c['test_accuracy'] for c in summary['runs']]  # one seed: the mean is the run's
  record = summary['runs'][0]
  scalars = [k for k, v in record.items() if v is None or isinstance(v, (bool, int, float, str))]
  assert list(rows[0]) == scalars == report.csv_columns(summary['runs'])
  for f in ('batch_size', 'test_examples', 'prefix_cache', 'prefix_cache_cut_layer',
            'cached_train_flops_per_step', 'prefix_flops_total', 'compute_flops_total',
            'prefix_cache_bytes', 'prefix_cache_location', 'prefix_cache_examples'):
    assert f in rows[0]
  for row, c in zip(rows, summary['runs']):
    for k in scalars:
      v = c[k]
      assert row[k] == ('' if v is None else str(v)), k
  assert 'trainable_layer_names' not in rows[0] and 'train_memory' not in rows[0]


def test_device_memory_fields(run):
  """The device memory model at batch 1, and its XLA ratio; see
  docs/accounting.md "The device memory model"."""
  _, summary, _ = run
  for c in summary['runs']:
    d = c['device_memory']
    assert (d['batch_size'], d['frozen_dtype']) == (1, 'float32')
    assert c['device_train_memory_bytes'] == d['total_bytes'] == (
        d['weights_bytes'] + d['layer_gradient_bytes'] + d['optimizer_bytes']
        + d['activation_bytes'] + d['largest_temp_bytes'])
    assert d['weights_bytes'] == 4 * c['total_params']
    assert d['trainable_weights_bytes'] == d['gradient_bytes'] == 4 * c['trainable_params']
    assert d['optimizer_bytes'] == 8 * c['trainable_params']
    assert c['device_to_xla_memory'] == pytest.approx(
        c['device_train_memory_bytes'] / c['xla_memory_at_device_batch_bytes'])
  # Kept for the backward pass: dense_1's input; from conv2d_5 up; everything (hand-worked in
  # tests/test_device_memory.py).
  kept = [c['device_memory']['activation_bytes'] for c in summary['runs']]
  assert kept == [4 * 128, 76_576, 770_336]


def test_traffic_and_measured_energy_fields(run):
  """Bytes accessed and transcendentals per example of the compiled step, the energy with
  memory, the edge traffic from the device memory model and the meter's readings, each from its
  formula (docs/accounting.md "Memory traffic", "Edge traffic", "Measured energy")."""
  config, summary, _ = run
  for c in summary['runs']:
    step, b = c['train_memory'], c['batch_size']
    assert c['bytes_accessed_per_example'] == step['bytes_accessed'] / b > 0
    assert c['transcendentals_per_example'] == step['transcendentals'] / b
    assert c['memory_energy_per_example_j'] == c['bytes_accessed_per_example'] * config.e_byte_j
    assert c['energy_with_memory_per_example_j'] == (
        c['energy_per_example_j'] + c['memory_energy_per_example_j'])
    e, d = c['edge_traffic'], c['device_memory']
    assert (e['activations_bytes'], e['gradients_bytes'], e['optimizer_bytes']) == (
        2 * d['activation_bytes'], 2 * d['gradient_bytes'], 2 * d['optimizer_bytes'])
    assert e['weights_updated_bytes'] == 2 * d['trainable_weights_bytes']
    assert e['input_bytes'] == 4 * 32 * 32 and e['weights_read_bytes'] >= d['weights_bytes']
    assert c['edge_traffic_bytes_per_step'] == e['total_bytes'] == sum(
        e[k] for k in ('input_bytes', 'weights_read_bytes', 'activations_bytes',
                       'gradients_bytes', 'optimizer_bytes', 'weights_updated_bytes'))
  # Head only moves the fewest bytes, full fine-tuning the most, in XLA's count and the edge's.
  for f in ('bytes_accessed_per_example', 'edge_traffic_bytes_per_step'):
    got = [c[f] for c in summary['runs']]
    assert got == sorted(got) and got[0] < got[-1] / 5, f
  # last:1 reads its weights once: nothing above dense_1 passes a gradient down.
  assert summary['runs'][0]['edge_traffic']['weights_read_bytes'] == (
      summary['runs'][0]['device_memory']['weights_bytes'])
  # The scripted meter: 10 W idle, 40 k J above it for the k-th run, over 3 steps of 16.
  assert [c['measured_energy_j'] for c in summary['runs']] == [40.0, 80.0, 120.0]
  for c in summary['runs']:
    assert (c['energy_meter'], c['idle_power_w']) == ('scripted', 10.0)
    assert c['measured_energy_per_example_j'] == c['measured_energy_j'] / 48
  assert [c['measured_energy_per_example_j_mean'] for c in summary['cases']] == [
      40 / 48, 80 / 48, 120 / 48]
  assert summary['energy_rank_correlations'] == dict(
      n_cases=3, cases=['last:1', 'last:9', 'last:23'],
      spearman=dict(mac=1.0, memory=1.0, edge_traffic=1.0))
  assert summary['e_byte_j'] == config.e_byte_j == 1.6e-10


def test_records_say_where_they_trained_and_cases_what_was_planned(run):
  """Each run records the device kind and data-parallel width its costs were compiled for; each
  case its planned and finished seeds and status."""
  _, summary, rows = run
  kind = jax.local_devices()[0].device_kind
  for r, row in zip(summary['runs'], rows):
    assert (r['device_kind'], r['data_parallel_width']) == (kind, 1)
    assert (row['device_kind'], row['data_parallel_width']) == (kind, '1')
  assert summary['planned_cases'] == ['last:1', 'last:9', 'last:23']
  assert summary['failed_runs'] == []
  for c in summary['cases']:
    assert (c['status'], c['status_detail'], c['device_kind']) == ('ok', None, kind)
    assert (c['n_seeds'], c['n_seeds_planned']) == (1, 1)
    assert c['seeds'] == c['seeds_planned'] == summary['seeds']
    assert c['seeds_missing'] == c['seeds_failed'] == c['seeds_diverged'] == []


def test_the_outputs_page_documents_every_field_a_sweep_writes(run):
  """docs/outputs.md against what the writer wrote: a row for every field of a run record, a
  summary and a metrics line (and none for a field no longer written); every case field is a
  documented one, a record field, or a documented pattern `<f>_suffix` of a record field."""
  from docs_pages import table_names  # pylint: disable=g-import-not-at-top
  _, summary, _ = run
  page = 'docs/outputs.md'
  record_keys = {k for r in summary['runs'] for k in r}
  assert set(table_names(page, 'Run record fields')) == record_keys
  documented = set(table_names(page, 'summary.json'))
  assert set(summary) <= documented and documented - set(summary) == {'recommendation'}
  with open(summary['config']['cache_dir'] + '/../w/metrics.jsonl') as f:
    line_keys = {k for line in f for k in json.loads(line)}
  assert set(table_names(page, 'metrics.jsonl')) == line_keys
  case_rows = table_names(page, 'Case fields')
  suffixes = [n.replace('<f>', '') for n in case_rows if n.startswith('<f>')]
  own = {n for n in case_rows if '<f>' not in n}
  for k in {k for c in summary['cases'] for k in c}:
    assert k in own or k in record_keys or any(
        k == f + s for f in record_keys for s in suffixes), f'document case field {k!r}'
  assert own - {k for c in summary['cases'] for k in c} == {'recommended'}
