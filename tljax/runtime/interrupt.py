"""Clean stops: SIGINT/SIGTERM set a flag that training checks between steps (stdlib only)."""

import os
import shlex
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received = []  # the signal numbers received, in order


class Interrupted(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
  """Training stopped at a signal, after saving what it could; `detail` says where."""

  def __init__(self, signum, detail=''):
    super().__init__(signum, detail)
    self.signum, self.detail = signum, detail

  @property
  def exit_code(self):
    return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _received_signal(signum):
  """Runs in the watcher thread at each signal: the first requests a stop, a second one exits."""
  if _received:  # a second signal: the user insists; stop now (files are written atomically)
    sys.stderr.write(f'\ntljax: {signal.Signals(signum).name} again: stopped at once; rerun the '
                     'same command to resume from the last checkpoint.\n')
    sys.stderr.flush()
    os._exit(128 + signum)  # pylint: disable=protected-access
  _received.append(signum)
  sys.stderr.write(f'\ntljax: {signal.Signals(signum).name} received: stopping after the current '
                   'step with a checkpoint (send it again to stop at once).\n')
  sys.stderr.flush()


def _watch(fd):
  # The C-level handler writes each signal's number to `fd` at once, even while the main thread
  # is inside XLA (where Python-level handlers wait): so the message shows at once, and a second
  # signal is seen as a second one (Python would merge two pending signals into one call).
  while True:
    for signum in os.read(fd, 64):
      if signum in SIGNALS:
        _received_signal(signum)


def install():
  """Makes SIGINT and SIGTERM request a clean stop instead of killing the process."""
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  for s in SIGNALS:
    signal.signal(s, lambda signum, frame: None)  # the watcher acts; this only stops the default
  signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  threading.Thread(target=_watch, args=(read_fd,), name='tljax-signals', daemon=True).start()


def request(signum):
  """What the handler does, for tests: as if `signum` had arrived."""
  _received.append(signum)


def reset():
  _received.clear()


def requested():
  """The first signal received, or None."""
  return _received[0] if _received else None


def check(detail=''):
  """Raises Interrupted when a signal arrived; call where there is nothing to save."""
  if _received:
    raise Interrupted(_received[0], detail)


def resume_command(argv=None):
  """The command line that resumes this run: the same one, without a `restart` override."""
  argv = list(sys.argv if argv is None else argv)
  keep = [a for a in argv if not (a.split('=')[0] in ('--config.restart', '--noconfig.restart'))]
  return shlex.join([os.path.basename(sys.executable) or 'python', *keep])
