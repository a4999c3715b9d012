"""Locks: one sweep per workdir, one process per (case, seed) run (OS file locks, flock, that
the OS releases when the holder dies)."""

import contextlib
import fcntl
import os
import socket
import time

from absl import logging

from tljax.runtime import interrupt
from tljax.runtime import parallel
from tljax.sweep import layout



class WorkdirLockedError(OSError):
  """Another process holds the workdir."""


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
    fd = os.open(layout.file_path(workdir, layout.LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise layout.not_writable(workdir, e) from e
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


RUN_LOCK_POLL_S = 2.0
_HELD_RUNS = set()  # (workdir, run) held by this process: run_lock is reentrant


def _try_run_lock(workdir, run):
  """(fd, None) with `run` locked by this process, or (None, holder) when another holds it."""
  path = layout.run_lock_path(workdir, run)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'unknown'
    os.close(fd)
    return None, holder
  os.ftruncate(fd, 0)
  os.pwrite(fd, f'host {socket.gethostname()}, PID {os.getpid()}\n'.encode(), 0)
  return fd, None


@contextlib.contextmanager
def run_lock(workdir, run, process_id=0):
  """Holds one (case, seed) run, or a seed's pretraining, for this process: an inline sweep and
  the launcher's jobs take it alike. When another live process holds it (a job of an earlier
  launch), waits until it is released (SIGINT/SIGTERM still stop the wait), so the caller then
  finds the run finished or resumes its checkpoint. In a multi-process run process 0 holds it
  for all (the others wait at a barrier)."""
  key = (os.path.abspath(workdir), run)
  if key in _HELD_RUNS:
    yield
    return
  fd = None
  if not process_id:
    fd, holder = _try_run_lock(workdir, run)
    if fd is None:
      logging.warning('Run %s is being trained by another process (%s): waiting for it.', run,
                      holder)
    while fd is None:
      interrupt.check(f'while waiting for run {run}, held by {holder}')
      time.sleep(RUN_LOCK_POLL_S)
      fd, holder = _try_run_lock(workdir, run)
  parallel.barrier(f'locking run {run}')
  _HELD_RUNS.add(key)
  try:
    yield
  finally:
    _HELD_RUNS.discard(key)
    if fd is not None:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
