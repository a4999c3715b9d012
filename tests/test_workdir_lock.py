"""One run per workdir: a second process stops at once; a killed holder leaves no stale lock."""

import os
import subprocess
import sys

import pytest

from tljax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ('import sys, time\n'
        'from tljax import workdir_lock\n'
        'with workdir_lock.held(sys.argv[1]):\n'
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
  with workdir_lock.held(str(workdir)):
    assert (workdir / '.tljax.lock').read_text() == f'{os.getpid()}\n'
  assert (workdir / '.tljax.lock').read_text() == ''  # released: the PID is cleared


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
  with workdir_lock.held(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirLockedError, match=rf'PID {os.getpid()}\)'):
      with workdir_lock.held(str(tmp_path)):
        pass
  with workdir_lock.held(str(tmp_path)):  # free again after the first is released
    pass


def test_process_0_alone_locks_for_a_multi_host_run(tmp_path):
  with workdir_lock.held(str(tmp_path), process_id=0):
    with workdir_lock.held(str(tmp_path), process_id=1):  # the others rely on process 0's lock
      assert os.listdir(tmp_path) == [workdir_lock.LOCK_NAME]
