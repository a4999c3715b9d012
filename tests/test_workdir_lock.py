"""One run per workdir: a second process stops at once; a killed holder leaves no stale lock."""

import os
import subprocess
import sys

import pytest

from tljax.sweep import layout
from tljax.sweep import locks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ('import sys, time\n'
        'from tljax.sweep import locks\n'
        'with locks.held(sys.argv[1]):\n'
        '  print("held", flush=True)\n'
        '  time.sleep(600)\n')


def test_a_second_run_stops_at_once_naming_the_workdir_and_the_holder(tmp_path):
  workdir = tmp_path / 'w'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  holder = subprocess.Popen([sys.executable, '-c', HOLD, str(workdir)], env=env,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    second = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'),
                             f'--workdir={workdir}', '--config.progress=False'], env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f'tljax: error: The workdir {workdir} is in use by another tljax run (PID {holder.pid}); '
        'wait for it to end or stop it, or pass --workdir=DIR for another folder.')
    assert 'Traceback' not in second.stderr
    assert sorted(os.listdir(workdir)) == ['.tljax.lock']  # the second run wrote nothing
  finally:
    holder.kill()  # SIGKILL: no clean-up runs, the OS releases the lock
    holder.wait()
  with locks.held(str(workdir)):
    assert (workdir / '.tljax.lock').read_text() == f'{os.getpid()}\n'
  assert (workdir / '.tljax.lock').read_text() == ''  # released: the PID is cleared


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
  with locks.held(str(tmp_path)):
    with pytest.raises(locks.WorkdirLockedError, match=rf'PID {os.getpid()}\)'):
      with locks.held(str(tmp_path)):
        pass
  with locks.held(str(tmp_path)):  # free again after the first is released
    pass


def test_process_0_alone_locks_for_a_multi_host_run(tmp_path):
  with locks.held(str(tmp_path), process_id=0):
    with locks.held(str(tmp_path), process_id=1):  # the others rely on process 0's lock
      assert os.listdir(tmp_path) == [layout.LOCK]


HOLD_RUN = ('import os, sys, time\n'
            'from tljax.sweep import locks\n'
            'with locks.run_lock(sys.argv[1], sys.argv[2]):\n'
            '  print("held", flush=True)\n'
            '  t = time.time()\n'
            '  while not os.path.exists(sys.argv[3]) and time.time() - t < 300:\n'
            '    time.sleep(0.1)\n'
            '  time.sleep(2)\n')


def test_an_inline_run_waits_for_a_job_that_holds_its_run_then_keeps_its_record(
    tiny_config, tmp_path, monkeypatch, caplog):
  """A job of an earlier launch (launcher_wait=False) still trains last:1 at seed 0: the inline
  sweep on the same workdir waits for its lock instead of training it in the same folders."""
  import json  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from tljax.training import case as case_lib  # pylint: disable=g-import-not-at-top
  from tljax.sweep import runner  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  tiny_config.cases = ('last:1',)
  first = runner.train_and_evaluate(tiny_config, str(workdir))  # the record the "job" will write
  run = case_lib.run_key('last:1', 0)
  record = (workdir / 'cases' / f'{run}.json').read_bytes()
  os.remove(workdir / 'cases' / f'{run}.json')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  done = workdir / 'cases' / f'{run}.json'  # the "job" ends once its record is written
  job = subprocess.Popen([sys.executable, '-c', HOLD_RUN, str(workdir), run, str(done)], env=env,
                         stdout=subprocess.PIPE, text=True)
  try:
    assert job.stdout.readline().strip() == 'held'
    real_lock = locks._try_run_lock  # pylint: disable=protected-access
    def try_lock(w, r):  # the job writes its record just before it releases the lock
      fd, holder = real_lock(w, r)
      if fd is None and job.poll() is None and not (workdir / 'cases' / f'{run}.json').exists():
        (workdir / 'cases' / f'{run}.json').write_bytes(record)
      return fd, holder
    monkeypatch.setattr(locks, '_try_run_lock', try_lock)
    monkeypatch.setattr(locks, 'RUN_LOCK_POLL_S', 0.2)
    t0 = time.time()
    with caplog.at_level(logging.INFO):
      again = runner.train_and_evaluate(tiny_config, str(workdir))
    assert time.time() - t0 >= 2  # it waited for the holder
  finally:
    job.kill()
    job.wait()
  assert f'Run {run} is being trained by another process' in caplog.text
  assert 'was finished by another process: kept' in caplog.text
  assert (workdir / 'cases' / f'{run}.json').read_bytes() == record  # not trained again
  assert again['runs'][0]['test_accuracy'] == first['runs'][0]['test_accuracy']
  assert json.loads(record)['fingerprint']


def test_the_run_lock_is_reentrant_and_exclusive_between_processes(tmp_path):
  with locks.run_lock(str(tmp_path), 'r'):
    with locks.run_lock(str(tmp_path), 'r'):  # a job's train_run inside its own lock
      pass
    fd, holder = locks._try_run_lock(str(tmp_path), 'r')  # pylint: disable=protected-access
    assert fd is None and f'PID {os.getpid()}' in holder
