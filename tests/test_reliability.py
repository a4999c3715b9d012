"""Reliability: kill, signals and resume, changed configs, divergence, bad input, determinism."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import optax
import pytest

from tests.conftest import XLA_CACHE
from tljax.runtime import backend
from tljax.runtime import interrupt
from tljax.sweep import layout
from tljax.sweep import runner
from tljax.training import case as case_lib
from tljax.training import checkpoints
from tljax.training import compiled

RUN_1 = case_lib.run_key('last:1', 0)  # the folders and records of case 1, seed 0
RUN_9 = case_lib.run_key('last:9', 0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {'wall_s', 'compile_s', 'examples_per_s'}


def _strip_timing(summary):
  runs = [{k: v for k, v in c.items() if k not in TIMING} for c in summary['runs']]
  pre = {seed: {k: v for k, v in info.items() if k not in TIMING | {'cached', 'path'}}
         for seed, info in summary['pretraining'].items()}  # the path names the cache folder
  return runs, pre


def _metrics(workdir, pretrain=False):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  recs = [json.loads(l) for l in lines]
  # Pretraining lines only appear in the run that pretrained (the other reuses the cache).
  return [{k: v for k, v in r.items() if k != 'examples_per_s'} for r in recs
          if pretrain or r['case'] != 'pretrain']


RUN = ['--config.pretrain_epochs=1', '--config.epochs=2', '--config.batch_size=16',
       '--config.cases=(1, 9)', '--config.checkpoint_every_steps=10',
       '--config.log_every_steps=5', '--config.progress=False', '--config.proxies=False',
       '--config.prefix_cache_always=True',  # resume on a cache filled for the remaining steps
       f'--config.compilation_cache_dir={XLA_CACHE}']


ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')


def _cmd(workdir, cache, *extra):
  return [sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={workdir}',
          f'--config.cache_dir={cache}', *RUN, *extra]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """(workdir, pretraining cache) of an uninterrupted run of RUN, shared by this module."""
  root = tmp_path_factory.mktemp('reference')
  ref = subprocess.run(_cmd(root / 'ref', root / 'cache'), env=ENV, capture_output=True,
                       text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-3000:]
  return root / 'ref', root / 'cache'


def test_sigkill_mid_case_then_resume_gives_the_same_summary(tmp_path, reference):
  ref_dir, cache = reference
  env = ENV
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_cmd(killed, cache), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = killed / 'checkpoints' / RUN_9
  deadline = time.time() + 300
  while time.time() < deadline:  # kill once case 9 has a checkpoint at step >= 20
    steps = [int(p) for p in os.listdir(ckpt) if p.isdigit()] if ckpt.is_dir() else []
    if steps and max(steps) >= 20:
      break
    assert proc.poll() is None, 'the run finished before it could be killed'
    time.sleep(0.05)
  else:
    pytest.fail('no checkpoint of case 9 appeared')
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (killed / 'cases' / f'{RUN_1}.json').exists()
  assert not (killed / 'cases' / f'{RUN_9}.json').exists()
  again = subprocess.run(_cmd(killed, cache), env=env, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Case last:1, seed 0 finished in an earlier run' in again.stderr
  assert 'resuming from the checkpoint at step' in again.stderr
  a = json.loads((ref_dir / 'summary.json').read_text())
  b = json.loads((killed / 'summary.json').read_text())
  assert _strip_timing(a) == _strip_timing(b)  # bit-identical numbers on CPU
  assert _metrics(ref_dir) == _metrics(killed)
  assert not (killed / 'checkpoints' / RUN_9).exists()


def _wait_for_metric(proc, workdir, case, step):
  """Waits until metrics.jsonl has a line of `case` at `step` or later."""
  path = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline:
    if path.exists():
      recs = [json.loads(l) for l in path.read_text().splitlines() if l.endswith('}')]
      if any(r['case'] == case and r['step'] >= step for r in recs):
        return
    assert proc.poll() is None, 'the run finished before the signal'
    time.sleep(0.005)
  pytest.fail(f'no metrics of {case} at step {step}')


@pytest.mark.parametrize('sig, case, step, private_cache', [
    (signal.SIGINT, 'last:9', 20, False),  # mid-case, between periodic checkpoints (there are none)
    (signal.SIGTERM, 'pretrain', 10, True),  # mid-pretraining (a cache of its own: it pretrains)
])
def test_a_signal_checkpoints_and_exits_with_how_to_resume(tmp_path, reference, sig, case, step,
                                                           private_cache):
  ref_dir, cache = reference
  cache = tmp_path / 'cache' if private_cache else cache
  work = tmp_path / 'w'
  cmd = _cmd(work, cache, '--config.checkpoint_every_steps=0')  # only the signal checkpoints
  with open(tmp_path / 'stderr', 'w') as log:  # a file: a full pipe would block the run
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=log)
    _wait_for_metric(proc, work, case, step)
    proc.send_signal(sig)
    proc.wait(timeout=300)
  err = (tmp_path / 'stderr').read_text()
  assert proc.returncode == 128 + sig, err[-3000:]
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  name = signal.Signals(sig).name
  match = re.fullmatch(
      rf'tljax: stopped by {name} \({case} \(seed 0\), step (\d+) of \d+, '
      rf'checkpoint saved in (\S+)\); finished cases are kept in {re.escape(str(work))}\. To '
      r'resume, run the same command: (.*)', last)
  assert match, last
  saved, where, again_cmd = int(match[1]), match[2], match[3]
  assert saved >= step and os.listdir(where) == [str(saved)]
  assert again_cmd == shlex.join([os.path.basename(sys.executable), *cmd[1:]])
  assert not (work / 'cases' / f'{RUN_9}.json').exists()
  if case == 'last:9':  # case 1 finished before the signal: its record and the summary are written
    cases = json.loads((work / 'summary.json').read_text())['cases']
    assert [(c['case'], c['status'], c['n_seeds']) for c in cases] == [
        ('last:1', 'ok', 1), ('last:9', 'incomplete', 0)]
  again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resuming from the checkpoint at step {saved}' in again.stderr
  a = json.loads((ref_dir / 'summary.json').read_text())
  b = json.loads((work / 'summary.json').read_text())
  assert _strip_timing(a) == _strip_timing(b)  # bit-identical numbers on CPU
  assert _metrics(ref_dir, pretrain=private_cache) == _metrics(work, pretrain=private_cache)


def test_a_signal_during_compilation_stops_before_the_next_case(tiny_config, tmp_path,
                                                                 monkeypatch):
  tiny_config.cases = (1, 9)
  tiny_config.pretrained = 'none'  # the first compilation is case 1's
  tiny_config.compile_workers = 1  # serial (tests/test_compile_pool.py stops the pool)
  real = compiled.compile_train
  monkeypatch.setattr(compiled, 'compile_train', lambda *a, **k: (
      interrupt.request(signal.SIGTERM), real(*a, **k))[1])  # arrives while case 1 compiles
  try:
    with pytest.raises(interrupt.Interrupted) as e:
      runner.train_and_evaluate(tiny_config, str(tmp_path))
  finally:
    interrupt.reset()
  assert e.value.signum == signal.SIGTERM and e.value.detail == 'before compiling case last:9'
  assert e.value.exit_code == 143
  assert not list(tmp_path.glob('cases/*.json'))  # no case trained
  monkeypatch.setattr(compiled, 'compile_train', real)
  summary = runner.train_and_evaluate(tiny_config, str(tmp_path))  # the rerun: lock released
  assert [c['case'] for c in summary['cases']] == ['last:1', 'last:9']


def test_a_stop_between_log_lines_keeps_the_metrics_not_yet_logged(tiny_config, tmp_path,
                                                                   monkeypatch):
  tiny_config.cases = (9,)
  tiny_config.pretrained = 'none'
  tiny_config.epochs, tiny_config.steps_per_epoch, tiny_config.log_every_steps = 2, 5, 4
  tiny_config.checkpoint_every_steps = 0
  ref = runner.train_and_evaluate(tiny_config, str(tmp_path / 'ref'))
  real, calls = interrupt.requested, []

  def signal_before_step_7():  # checked once before each step: steps 5 and 6 are not logged yet
    calls.append(1)
    if len(calls) == 7:
      interrupt.request(signal.SIGINT)
    return real()

  monkeypatch.setattr(interrupt, 'requested', signal_before_step_7)
  try:
    with pytest.raises(interrupt.Interrupted) as e:
      runner.train_and_evaluate(tiny_config, str(tmp_path / 'w'))
  finally:
    interrupt.reset()
  assert e.value.detail.startswith('last:9 (seed 0), step 6 of 10, checkpoint saved in')
  monkeypatch.setattr(interrupt, 'requested', real)
  again = runner.train_and_evaluate(tiny_config, str(tmp_path / 'w'))
  assert _strip_timing(again) == _strip_timing(ref)
  assert _metrics(tmp_path / 'ref') == _metrics(tmp_path / 'w')  # step 8 averages steps 5-8


def test_the_resume_command_is_the_same_one_without_restart():
  argv = ['launch.py', '--workdir=w', '--config.restart=True', '--config.batch_size=3',
          '--config.name=a b']
  assert interrupt.resume_command(argv).endswith(
      "launch.py --workdir=w --config.batch_size=3 '--config.name=a b'")


def test_changed_config_is_refused_unless_restart(tiny_config, tmp_path):
  tiny_config.cases = (1,)
  tiny_config.pretrained = 'none'  # the config check is the point, not pretraining
  runner.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.learning_rate = 0.01
  tiny_config.progress = True  # safe: changes no number
  with pytest.raises(layout.ConfigChangedError, match=r'learning_rate: 0.001 -> 0.01'):
    runner.train_and_evaluate(tiny_config, str(tmp_path))
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['config']['learning_rate'] == 0.001  # the earlier results are untouched
  tiny_config.restart = True
  again = runner.train_and_evaluate(tiny_config, str(tmp_path))
  assert again['config']['learning_rate'] == 0.01


def test_divergence_is_recorded_and_the_sweep_goes_on(tiny_config, tmp_path, monkeypatch):
  tiny_config.pretrained = 'none'
  tiny_config.cases = (1, 9)
  real_adam = optax.adam
  made = []

  def adam_that_blows_up_first_case(lr):
    made.append(lr)  # case 1's optimiser turns its first update into NaN; case 9's is real
    return optax.chain(real_adam(lr), optax.scale(np.nan)) if len(made) == 1 else real_adam(lr)

  monkeypatch.setattr(optax, 'adam', adam_that_blows_up_first_case)
  summary = runner.train_and_evaluate(tiny_config, str(tmp_path))
  assert [c['status'] for c in summary['cases']] == ['diverged (seed 0)', 'ok']
  first, second = summary['runs']
  # Step 1's loss is finite (computed before the NaN update); step 2's is NaN.
  assert first['status'] == 'diverged' and first['diverged_at_step'] == 2
  assert first['test_accuracy'] is None and first['test_loss'] is None
  assert second['status'] == 'ok' and second['test_accuracy'] is not None
  text = (tmp_path / 'summary.json').read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  assert 'diverged' in (tmp_path / 'results.csv').read_text()
  assert (tmp_path / 'figure.png').exists()


def test_same_config_and_seed_same_summary(tiny_config, tmp_path):
  tiny_config.cases = (9,)
  a = runner.train_and_evaluate(tiny_config, str(tmp_path / 'a'))
  b = runner.train_and_evaluate(tiny_config, str(tmp_path / 'b'))
  assert _strip_timing(a) == _strip_timing(b)
  assert a['seeds'] == [0]
  assert {'jax', 'flax', 'optax', 'xla_flags', 'backend', 'xla_compiler_options'} <= set(a['environment'])
  assert a['environment']['xla_compiler_options'] == backend.compiler_options(tiny_config)


def test_wrong_image_size_for_the_model(tiny_config, tmp_path):
  tiny_config.image_size = 64
  with pytest.raises(ValueError, match=r"config.image_size=64: model 'small_cnn' takes exactly 32x32"):
    runner.train_and_evaluate(tiny_config, str(tmp_path))


def test_unwritable_workdir_fails_before_training(tiny_config, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(PermissionError, match='is not writable'):
    runner.train_and_evaluate(tiny_config, str(blocker / 'w'))


def test_full_disk_fails_before_training(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setattr(layout.shutil, 'disk_usage', lambda p: type('U', (), {'free': 10 * 2**20})())
  with pytest.raises(OSError, match=r'Only 10 MiB free on the disk of'):
    runner.train_and_evaluate(tiny_config, str(tmp_path))
  assert not (tmp_path / 'summary.json').exists()


def test_too_little_memory_suggests_a_batch(tiny_config, tmp_path, monkeypatch):
  tiny_config.cases = (1, 23)
  tiny_config.pretrained = 'none'
  monkeypatch.setattr(backend, 'available_memory_bytes', lambda: 12 * 2**20)
  with pytest.raises(MemoryError, match=r'Case last:23 needs \d+ MiB .* Try --config.batch_size=\d+'):
    runner.train_and_evaluate(tiny_config, str(tmp_path))
  assert not (tmp_path / 'summary.json').exists()  # nothing trained


def test_corrupt_checkpoint_names_its_path(tiny_config, tmp_path):
  tiny_config.cases = (1,)
  tiny_config.pretrained = 'none'
  tiny_config.checkpoint_every_steps = 1
  tiny_config.steps_per_epoch = 4
  tiny_config.log_every_steps = 1
  runner.train_and_evaluate(tiny_config, str(tmp_path))
  # Make case 1 look unfinished with a damaged checkpoint (marked as this run's).
  fp = json.loads((tmp_path / 'cases' / f'{RUN_1}.json').read_text())['fingerprint']
  os.remove(tmp_path / 'cases' / f'{RUN_1}.json')
  layout.claim_checkpoints(str(tmp_path), RUN_1, fp)
  ck = checkpoints.Checkpoints(layout.case_dir(str(tmp_path), RUN_1))
  case = case_lib.make_case(tiny_config, 1, num_classes=5)
  ck.save(case.state, {'step': 2, 'epoch': 0, 'wall_s': 0.0})
  ck.close()  # on disk (saves are asynchronous) before it is damaged
  for root, _, files in os.walk(layout.case_dir(str(tmp_path), RUN_1)):
    for f in files:
      if 'state' in root:
        with open(os.path.join(root, f), 'wb') as fh:
          fh.write(b'garbage')
  with pytest.raises(ValueError, match=r'checkpoint .*' + RUN_1 + '/2 cannot be read'):
    runner.train_and_evaluate(tiny_config, str(tmp_path))


def test_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
  from tljax.runtime import report
  path = tmp_path / 'summary.json'
  report.write_json(str(path), {'cases': [1, 2, 3]})

  def crash(src, dst):
    raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming
  monkeypatch.setattr(report.os, 'replace', crash)
  with pytest.raises(KeyboardInterrupt):
    report.write_json(str(path), {'cases': [1, 2, 3, 4]})
  assert json.loads(path.read_text()) == {'cases': [1, 2, 3]}
  assert os.listdir(tmp_path) == ['summary.json']  # no temporary file left behind
