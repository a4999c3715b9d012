"""The benchmark's own functions on the small CNN: two timed steps of one case, JSON and table."""

import json

import pytest

from tljax import bench
from tljax import report


def test_median_time_counts_calls():
  calls = []
  med, samples = bench.median_time(lambda: calls.append(1), number=3, repeat=2, warmup=1)
  assert len(calls) == 7 and len(samples) == 2 and med >= 0


def test_median_time_rejects_zero_steps():
  with pytest.raises(ValueError):
    bench.median_time(lambda: None, number=0, repeat=1)


def test_small_cnn_one_case(tmp_path):
  spec = bench.model_specs(quick=True, models=('small_cnn',))[0]
  spec.update(cases=(4,), timing=dict(number=1, repeat=2, warmup=0),
              input_timing=dict(number=1, repeat=2, warmup=0))
  peers = tuple(p for p in bench.PEERS if bench.peer_available(p)[0])
  result = bench.run(peers=peers, specs=[spec], log=lambda s: None)
  for key in ('date', 'machine', 'versions', 'models', 'wall_s'):
    assert key in result
  assert result['machine']['cores'] >= 1
  (m,) = result['models']
  (row,) = m['cases']
  assert row['case'] == 4 and row['trainable_layers'] == 4
  assert len(row['samples_s']) == 2
  for key in ('step_s', 'examples_per_s', 'train_flops_per_step', 'gflops_per_s', 'compile_s'):
    assert row[key] > 0, key
  # The only case is the reference: fractions of itself.
  assert row['time_frac_full'] == pytest.approx(1.0)
  assert row['time_to_flops'] == pytest.approx(1.0)
  assert m['input']['examples_per_s'] > 0
  assert 'other_cpu_share' in m['contention'] or 'loadavg_1min_at_start' in m['contention']
  for name in bench.PEERS:
    peer = m['peers'][name]
    if name not in peers:
      continue
    assert peer['available'], peer['note']
    (pc,) = peer['cases']
    assert pc['case'] == 4 and pc['step_s'] > 0 and pc['trainable_params'] == 263_818
    assert row['peers'][name] > 0
  if peers:
    assert row['ratio_to_fastest_peer'] > 0 and row['fastest_peer'] in peers
  table = bench.format_tables(m)
  assert 'small_cnn' in table and 'tljax/best' in table and 'quotient' in table
  assert any(line.startswith('4 ') for line in table.splitlines())
  path = tmp_path / 'bench.json'
  report.write_json(str(path), result)
  assert json.loads(path.read_text())['models'][0]['cases'][0]['case'] == 4


def test_missing_peer_is_skipped_with_a_note(monkeypatch):
  monkeypatch.setitem(bench.PEER_MODULES, 'torch', ('no_such_module_tljax',))
  spec = bench.model_specs(quick=True, models=('small_cnn',))[0]
  out = bench.run_peer('torch', spec, (1,), dict(number=1, repeat=1, warmup=0))
  assert bench.model_specs(quick=True, models=('efficientnet_b0',))[0]['cases'] == (0, 3)
  assert not out['available'] and 'not installed' in out['note'] and out['cases'] == []


def test_b0_case_labels():
  spec = bench.model_specs(quick=False, models=('efficientnet_b0',))[0]
  assert spec['cases'] == (0, 3, 237)  # 237 base layers: Keras's 238 less the InputLayer
  assert [bench.case_label(spec, n) for n in spec['cases']] == ['head', 'top', 'all']
  assert [bench._peer_case_kind(spec, n) for n in spec['cases']] == ['head', 'top', 'all']  # pylint: disable=protected-access
