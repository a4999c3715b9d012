"""The whole-sweep benchmark: its data, its table, and a tiny sweep in every installed framework."""

import json

import numpy as np
import pytest

from benchmarks import sweep
from benchmarks import tables


def test_generated_data_is_balanced_deterministic_and_distinct():
  images, labels = sweep.generate('source', 'train', 50)
  assert images.shape == (50, 32, 32, 1) and images.dtype == np.uint8
  assert labels.dtype == np.int32 and np.bincount(labels).tolist() == [5] * 10
  again, _ = sweep.generate('source', 'train', 50)
  assert np.array_equal(images, again)
  other, _ = sweep.generate('target', 'train', 50)
  test, _ = sweep.generate('source', 'test', 50)
  assert not np.array_equal(images, other) and not np.array_equal(images, test)
  assert 40 < images.std() < 90  # a grating under noise, not saturated


def test_sizes_scale_and_floors():
  assert sweep.sizes(1.0, 64) == {'source': (50_000, 10_000), 'target': (60_000, 10_000)}
  assert sweep.sizes(0.1, 64) == {'source': (5_000, 1_000), 'target': (6_000, 1_000)}
  assert sweep.sizes(0.0001, 64) == {'source': (64, 10), 'target': (64, 10)}


def _fw(wall, compile_s=None, acc=0.5):
  phases = {p: dict(wall_s=wall[p], test_accuracy=acc, steps=10,
                    **({} if compile_s is None else dict(
                        compile_s=compile_s, parts={'plan': compile_s,
                                                    'run': wall[p] - compile_s - 0.1,
                                                    'outputs': 0.1})))
            for p in wall}
  r = dict(available=True, imports_s=2.0, sweep_s=sum(wall.values()) + 1.0, other_s=1.0,
           phases=phases, versions={'x': '1'}, note='', contention={'other_cpu_share': 0.01})
  if compile_s is not None:
    r.update(compile_s=compile_s * len(wall), other_compile_s=0.0,
             other_parts={'setup': 0.6, 'outputs': 0.4})
  return r


def test_sweep_table_rows_ratios_and_target():
  names = ['pretraining'] + [f'case {n}' for n in sweep.CASES]
  tl = _fw({n: 10.0 for n in names}, compile_s=1.0)
  tl['compile_pool'] = dict(workers=2, programs=[{}] * 9, total_s=3.0, wall_s=2.0, overlap_s=1.5)
  torch = _fw({n: 20.0 for n in names})
  keras = _fw({n: (5.0 if n == 'case 23' else 40.0) for n in names}, acc=0.6)
  result = dict(date='d', machine=dict(cpu='cpu', cores=2),
                data=dict(generated=True, prepare_s=None, seconds=1.0,
                          roles={'source': dict(classes=10, train=100, test=20),
                                 'target': dict(classes=10, train=120, test=20)}),
                settings=dict(image='32x32x1', batch_size=64, optimizer='Adam(0.001)',
                              pretrain_epochs=3, epochs=2, cases=list(sweep.CASES)),
                frameworks={'tljax': tl, 'torch': torch, 'keras': keras,
                            'none': dict(available=False, note='not installed (none)')})
  tables.SWEEP_NAMES.setdefault('none', 'none')
  text = tables.sweep_table(result)
  lines = text.splitlines()
  for row in ['start-up (imports)'] + names + ['other', 'total']:
    assert any(l.startswith(row + ' ') for l in lines), row
  case1 = next(l for l in lines if l.startswith('case 1 '))
  assert case1.split()[-4:] == ['1.0', '20.0', '40.0', '0.50']  # compile, torch, keras, ratio
  case23 = next(l for l in lines if l.startswith('case 23 '))
  assert case23.split()[-1] == '2.00'  # Keras is the fastest peer there
  total = next(l for l in lines if l.startswith('total '))
  # tljax 2 + 70 + 1 = 73 s against PyTorch's 2 + 140 + 1 = 143 s.
  assert total.split()[1] == '73.0' and total.split()[-1] == f'{73 / 143:.2f}'
  assert total.split()[2] == '10.0'  # compiling: 7 s in the phases + 3 s on the pool's threads
  assert ' '.join(text.split()).count('tljax compile pool: 9 programs on 2 threads, 3.0 s of '
                                      'compiling in a compile wall of 2.0 s, 1.5 s of it') == 1
  assert 'not met' in text and 'slower: case 23' in text
  assert 'none: not installed' in text
  assert 'test accuracy' in text and '0.6000' in text
  json.dumps(result)


@pytest.mark.slow
def test_tiny_sweep_in_every_installed_framework(tmp_path, capsys):
  """The whole path at a tiny size: data, three processes, phases, table, JSON."""
  frameworks = [f for f in sweep.FRAMEWORKS if sweep.available(f)[0]]
  assert 'tljax' in frameworks
  out = tmp_path / 'sweep.json'
  sweep.main(['--scale=0.002', '--pretrain_epochs=1', '--epochs=1', '--cases=1',
              f'--frameworks={",".join(frameworks)}', f'--out={out}'])
  text = capsys.readouterr().out
  result = json.loads(out.read_text())
  assert result['data']['roles']['target'] == dict(classes=10, train=120, test=20, folder=None)
  for name in frameworks:
    r = result['frameworks'][name]
    assert r['available'], r.get('note')
    assert set(r['phases']) == {'pretraining', 'case 1'}
    for phase in r['phases'].values():
      assert phase['wall_s'] > 0 and 0 <= phase['test_accuracy'] <= 1
    assert r['imports_s'] > 0 and r['sweep_s'] >= sum(p['wall_s'] for p in r['phases'].values())
  tl = result['frameworks']['tljax']
  assert tl['compile_pool']['total_s'] > 0
  assert 'tljax compile pool: ' in text
  # One step over 120 examples: the cost model trains it uncached.
  assert tl['phases']['case 1']['prefix_cache'] is False
  assert tl['phases']['pretraining']['steps'] == 1  # 100 examples, batch 64
  assert set(tl['phases']['case 1']['parts']) == {'plan', 'run', 'outputs'}
  for row in ('start-up (imports)', 'pretraining', 'case 1', 'other', 'total'):
    assert any(l.startswith(row + ' ') for l in text.splitlines()), row
  if len(frameworks) > 1:
    assert 'tljax/fastest peer' in text


def test_bad_flags():
  with pytest.raises(SystemExit, match='unknown frameworks'):
    sweep.main(['--frameworks=tljax,mxnet'])
  with pytest.raises(SystemExit, match='go together'):
    sweep.main(['--source_dir=/x'])


def test_folders_are_prepared_by_tljax_and_subsampled(tmp_path):
  from benchmarks import data as bench_data  # pylint: disable=g-import-not-at-top
  src = bench_data.make_folder(str(tmp_path / 'src'), 40, 12, 16, seed=1, classes=4)
  tgt = bench_data.make_folder(str(tmp_path / 'tgt'), 30, 9, 48, seed=2, classes=3)
  out = tmp_path / 'data'
  out.mkdir()
  info = sweep.make_data(str(out), 1.0, 8, src, tgt)
  assert not info['generated'] and info['prepare_s'] > 0
  assert info['roles']['source'] == dict(classes=4, train=40, test=12, folder=src)
  assert info['roles']['target'] == dict(classes=3, train=30, test=9, folder=tgt)
  arrays = sweep.load_data(str(out))
  images, labels = arrays[('target', 'train')]
  assert images.shape == (30, 32, 32, 1) and images.dtype == np.uint8 and labels.max() == 2
  assert sorted(p.name for p in out.iterdir()) == sorted(
      f'{r}_{s}_{k}.npy' for r in ('source', 'target') for s in ('train', 'test')
      for k in ('images', 'labels'))  # tljax's prepare cache removed
  half = sweep.make_data(str(out), 0.5, 8, src, tgt)
  assert half['roles']['target']['train'] == 15 and half['roles']['source']['test'] == 6
  assert sweep.make_data(str(out), 0.01, 8, src, tgt)['roles']['target'] == dict(
      classes=3, train=8, test=3, folder=tgt)  # a batch, a test example per class
