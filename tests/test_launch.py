"""`python launch.py` end to end, the outputs it writes, and its one-line errors."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import XLA_CACHE
from tljax.sweep import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE_FIELDS = ('case', 'trainable_layers', 'trainable_params', 'total_params', 'test_accuracy',
               'test_loss', 'train_flops_per_step', 'train_flops_per_example',
               'forward_flops_per_example', 'analytic_train_flops_per_example',
               'xla_to_analytic_train_flops', 'energy_per_example_j', 'energy_per_step_j',
               'energy_total_j', 'thesis_energy_per_example_j', 'train_memory_bytes', 'wall_s',
               'examples_per_s', 'compile_s')
# The shrunk config's settings (conftest.shrunk_default) and its session compilation cache.
FAST = ['--config.pretrain_epochs=1', '--config.epochs=1', '--config.steps_per_epoch=3',
        '--config.batch_size=16', '--config.eval_batch_size=128', '--config.progress=False',
        '--config.proxies=False', '--config.device_xla_check=False',
        f'--config.compilation_cache_dir={XLA_CACHE}']


def _launch(*args, cwd=ROOT):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


def test_launch_default_experiment_end_to_end(tmp_path):
  workdir = tmp_path / 'w'
  r = _launch(f'--workdir={workdir}', f'--config.cache_dir={tmp_path / "cache"}', *FAST)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['dry_run'] is False
  assert summary['name'] == 'default'
  assert summary['environment']['backend'] == 'cpu'
  assert summary['pretraining']['0']['dataset'] == 'digits'
  assert summary['pretraining']['0']['cached'] is False
  names = ['last:1', 'last:4', 'last:9', 'last:11', 'last:17', 'last:23']
  assert [c['case'] for c in summary['cases']] == names
  assert [c['case'] for c in summary['runs']] == names  # one seed: a run per case
  for c in summary['runs']:
    for f in CASE_FIELDS:
      assert c[f] is not None, f
    assert c['status'] == 'ok'
    assert 0.0 <= c['test_accuracy'] <= 1.0
    assert c['steps'] == 3
    assert c['train_flops_per_example'] == pytest.approx(c['train_flops_per_step'] / 16)
    assert c['energy_per_example_j'] == pytest.approx(c['train_flops_per_example'] / 2 * 3.2e-12)
    assert c['energy_total_j'] == pytest.approx(3 * c['energy_per_step_j'])
  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['case'] for r in rows] == names
  assert float(rows[0]['train_flops_per_example']) == summary['cases'][0]['train_flops_per_example']
  metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert {m['case'] for m in metrics} == {'pretrain', *names}
  assert json.loads((workdir / 'config.json').read_text())['epochs'] == 1
  assert (workdir / 'figure.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert not [p for p in os.listdir(workdir) if p.endswith('.tmp')]
  # The console ends with the answer: a table with a row per case; no library INFO chatter.
  table = r.stdout.strip().splitlines()
  assert table[-1].startswith('Written to') and table[-2] == (
      f"Figures: {workdir / 'figure.png'}, {workdir / 'pareto.png'}")
  head = next(i for i, line in enumerate(table) if 'test acc' in line)
  assert [row.split()[0] for row in table[head + 2:head + 8]] == names
  assert 'checkpoint_manager.py' not in r.stderr and 'Case last:1, seed 0:' in r.stderr


def test_pretraining_is_cached(tiny_config, tmp_path):
  tiny_config.cases = (1,)
  first = runner.train_and_evaluate(tiny_config, str(tmp_path / 'a'))
  second = runner.train_and_evaluate(tiny_config, str(tmp_path / 'b'))
  assert first['pretraining']['0']['cached'] is False
  assert second['pretraining']['0']['cached'] is True
  assert second['pretraining']['0']['path'] == first['pretraining']['0']['path']
  assert second['cases'][0]['test_accuracy'] == first['cases'][0]['test_accuracy']
  assert second['cases'][0]['test_loss'] == first['cases'][0]['test_loss']


@pytest.mark.parametrize('args, message', [
    (['--config.bach_size=3'], 'bach_size Did you mean "batch_size"'),
    (['--config.batch_size=abc'], "--config.batch_size=abc"),
    (['--config.target_dataset=cifar11'],
     "config.target_dataset='cifar11': unknown dataset; known datasets: cifar10"),
    (['--config.model=resnet'], "config.model='resnet': unknown model; known models:"),
    (['--config.cases=(4, 24)'],
     'Case 24 is out of range: the model has 23 layers, so a case trains the last 1..23'),
    (['--config=configs/test1.py:sideways'], "the direction is 'forward' or 'reverse'"),
])
def test_bad_input_fails_with_its_message(tmp_path, args, message):
  r = _launch(f'--workdir={tmp_path / "w"}', *args)
  assert r.returncode != 0
  assert message in r.stderr, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'w' / 'summary.json').exists()
