"""The step benchmark's own functions on the small CNN: two timed steps of one case, JSON and table."""

import json

import pytest

from benchmarks import prefix as prefix_bench
from benchmarks import step as bench
from benchmarks import tables
from benchmarks import timing
from tljax.runtime import report


def test_median_time_counts_calls():
  calls = []
  med, samples = timing.median_time(lambda: calls.append(1), number=3, repeat=2, warmup=1)
  assert len(calls) == 7 and len(samples) == 2 and med >= 0


def test_median_time_rejects_zero_steps():
  with pytest.raises(ValueError):
    timing.median_time(lambda: None, number=0, repeat=1)


def test_small_cnn_one_case(tmp_path):
  spec = bench.model_specs(quick=True, models=('small_cnn',))[0]
  spec.update(cases=(4,), timing=dict(number=1, repeat=2, warmup=0),
              input_timing=dict(number=1, repeat=2, warmup=0))
  peers = tuple(p for p in bench.PEERS if bench.peer_available(p)[0])
  result = bench.run(peers=peers, specs=[spec], log=lambda s: None, prefix=False)
  for key in ('date', 'machine', 'versions', 'models', 'wall_s', 'waited_for_idle_s'):
    assert key in result
  assert result['machine']['cores'] >= 1
  (m,) = result['models']
  (row,) = m['cases']
  assert row['case'] == 4 and row['trainable_layers'] == 4
  assert len(row['samples_s']) == 2
  for key in ('step_s', 'examples_per_s', 'train_flops_per_step', 'gflops_per_s', 'compile_s'):
    assert row[key] > 0, key
  # Without the full case (23) there is no reference for the fractions.
  assert m['full_case'] == 23 and row['time_frac_full'] is None and row['time_to_flops'] is None
  assert m['input']['examples_per_s'] > 0
  assert 'other_cpu_share' in m['contention'] or 'loadavg_1min_at_start' in m['contention']
  for name in bench.PEERS:
    if name not in peers:  # not installed here: run_peer is not even called
      continue
    peer = m['peers'][name]
    assert peer['available'], peer['note']
    (pc,) = peer['cases']
    assert pc['case'] == 4 and pc['step_s'] > 0 and pc['trainable_params'] == 263_818
    assert row['peers'][name] > 0
  if peers:
    assert row['ratio_to_fastest_peer'] > 0 and row['fastest_peer'] in peers
  table = tables.step_tables(m)
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
  assert [bench.peer_case_kind(spec, n) for n in spec['cases']] == ['head', 'top', 'all']


def test_b0_batch_sizes_and_gpu_timing():
  specs = bench.model_specs(quick=False, models=('efficientnet_b0',), depthwise=('grouped',),
                            b0_batch_sizes=(32, 128), gpu=True)
  assert [s['batch_size'] for s in specs] == [32, 128]
  assert all(s['impls'] == ('grouped',) and s['timing'] == bench.GPU_TIMING
             and s['grouped_timing'] == bench.GPU_TIMING for s in specs)
  cpu = bench.model_specs(quick=True, models=('efficientnet_b0',))[0]
  assert cpu['timing'] == bench.TIMING['quick']['efficientnet_b0']


def _row(case, step_s, flops, share=0.0):
  return dict(case=case, label=str(case), depthwise_impl=None, trainable_layers=case,
              step_s=step_s, examples_per_s=64 / step_s, train_flops_per_step=flops,
              gflops_per_s=flops / step_s / 1e9, compile_s=1.0, other_cpu_share=share)


def test_fractions_ratios_and_table():
  peer_cases = [dict(case=4, step_s=0.05, examples_per_s=1280.0, other_cpu_share=0.2),
                dict(case=23, step_s=0.1, examples_per_s=640.0, other_cpu_share=0.0)]
  result = dict(model='small_cnn', batch_size=64, image_size=32, channels=1, counting='model',
                full_case=23, cases=[_row(4, 0.1, 2e9), _row(23, 0.2, 1e10)],
                input=dict(examples_per_s=1e5, source='test'),
                peers={'torch': dict(available=True, note='', cases=peer_cases),
                       'keras_tf': dict(available=False, note='not installed', cases=[])})
  bench._derive(result)  # pylint: disable=protected-access
  r4, r23 = result['cases']
  assert r4['time_frac_full'] == pytest.approx(0.5)
  assert r4['flops_frac_full'] == pytest.approx(0.2)
  assert r4['time_to_flops'] == pytest.approx(2.5)
  assert r4['ratio_to_fastest_peer'] == pytest.approx(640 / 1280)
  assert r4['fastest_peer'] == 'torch' and r4['max_other_cpu_share'] == pytest.approx(0.2)
  assert r4['peer_time_frac_full'] == {'torch': pytest.approx(0.5)}
  assert r23['time_to_flops'] == pytest.approx(1.0)
  table = tables.step_tables(result)
  line4 = next(l for l in table.splitlines() if l.startswith('4 ') and '2.50' in l)
  assert line4.split()[-2:] == ['0.500', '-'] and '2.50*' in line4
  assert 'keras_tf: not installed' in table
  result['input'] = dict(examples_per_s=None, source='TensorFlow not installed')  # a GPU image
  assert 'input pipeline - ex/s (TensorFlow not installed)' in tables.step_tables(result)


def test_prefix_cache_end_to_end_runs(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(prefix_bench.SIZES, 'small_cnn', {'quick': (192, 64)})
  monkeypatch.setattr(prefix_bench, 'EPOCHS', 2)
  out = tmp_path / 'prefix.json'
  prefix_bench.main(['--quick', '--models=small_cnn', f'--out={out}'])  # python -m benchmarks.prefix
  assert 'end to end' in capsys.readouterr().out
  r = json.loads(out.read_text())['small_cnn']
  cached, plain = r['runs']['cached'], r['runs']['uncached']
  assert cached['prefix_cache'] and not plain['prefix_cache']
  # 2 epochs visit every train example (none of the test split's).
  assert cached['cut_layer'] == 'dense_1' and cached['cache_bytes'] == 192 * 128 * 4
  assert cached['steps'] == plain['steps'] == 2 * 3  # 192 / 64 per epoch
  # Same batches, same dropout masks: equal up to float reassociation.
  assert r['loss_difference'] < 1e-5 and r['accuracy_difference'] == 0
  assert r['speedup_end_to_end'] == plain['end_to_end_s'] / cached['end_to_end_s']
  assert cached['compute_flops_total'] < plain['compute_flops_total']
  assert 'end to end' in tables.prefix_table(r)


def test_conv_layouts_compute_the_same_gradients():
  from benchmarks import conv_layout  # pylint: disable=g-import-not-at-top
  diff, out = conv_layout.measure(rounds=1, steps=1, batch=2)
  assert diff < 1e-5 and all(len(v) == 1 and v[0] > 0 for v in out.values())


def test_checkpoint_bench_times_both_kinds_of_save():
  from benchmarks import checkpoint  # pylint: disable=g-import-not-at-top
  out = checkpoint.measure(case=1, examples=640, every=4, rounds=1, log=lambda m: None)
  for kind in ('sync', 'async'):
    (row,) = out[kind]
    assert row['saves'] == 2 and row['examples_per_s'] > 0 and row['save_blocked_s'] > 0
