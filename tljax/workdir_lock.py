"""One run per workdir: an exclusive OS file lock (flock) that the OS releases when the run dies."""

import contextlib
import fcntl
import os
import time

from tljax import parallel
from tljax import resume

LOCK_NAME = '.tljax.lock'


class WorkdirLockedError(OSError):
  """Another process holds the workdir."""


def lock_path(workdir):
  return os.path.join(workdir, LOCK_NAME)


def _holder(fd):
  """The PID written by the holder (it writes right after locking: wait a moment for it)."""
  for _ in range(20):
    pid = os.pread(fd, 32, 0).decode(errors='replace').strip()
    if pid:
      return pid
    time.sleep(0.05)
  return 'unknown'


def _lock(workdir):
  """The fd of `workdir`'s lock file, locked, with this PID in it; raises if another holds it."""
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(lock_path(workdir), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise resume.not_writable(workdir, e) from e
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(fd)
    os.close(fd)
    raise WorkdirLockedError(
        f'The workdir {workdir} is in use by another tljax run (PID {holder}); wait for '
        'it to end or stop it, or pass --workdir=DIR for another folder.') from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
  return fd


@contextlib.contextmanager
def held(workdir, process_id=0):
  """Holds `workdir` for this run; raises WorkdirLockedError at once if another run holds it.

  In a multi-process run process 0 (`process_id`) alone holds the lock, for all of them (it
  alone writes the workdir); the others wait until it has it, and fail when it failed.
  The lock file stays (removing it would let two processes lock two different files); only the
  PID inside it is cleared on release. A killed process's lock is released by the OS.
  """
  fd = error = None
  if not process_id:
    try:
      fd = _lock(workdir)
    except OSError as e:
      error = e
  parallel.barrier('locking the workdir', error is None)
  if error is not None:
    raise error
  try:
    yield
  finally:
    if fd is not None:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
