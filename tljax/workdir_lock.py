"""One run per workdir: an exclusive OS file lock (flock) that the OS releases when the run dies."""

import contextlib
import fcntl
import os
import time

from tljax import resume

LOCK_NAME = '.tljax.lock'


class WorkdirLockedError(OSError):
  """Another process holds the workdir."""


def lock_path(workdir, process_id=0):
  # Each process of a multi-host run writes the same workdir: one lock per process id.
  return os.path.join(workdir, LOCK_NAME if not process_id else f'{LOCK_NAME}.{process_id}')


def _holder(fd):
  """The PID written by the holder (it writes right after locking: wait a moment for it)."""
  for _ in range(20):
    pid = os.pread(fd, 32, 0).decode(errors='replace').strip()
    if pid:
      return pid
    time.sleep(0.05)
  return 'unknown'


@contextlib.contextmanager
def held(workdir, process_id=0):
  """Holds `workdir` for this process; raises WorkdirLockedError at once if another holds it.

  The lock file stays (removing it would let two processes lock two different files); only the
  PID inside it is cleared on release. A killed process's lock is released by the OS.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(lock_path(workdir, process_id), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise resume.not_writable(workdir, e) from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirLockedError(
          f'The workdir {workdir} is in use by another tljax run (PID {_holder(fd)}); wait for '
          'it to end or stop it, or pass --workdir=DIR for another folder.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
