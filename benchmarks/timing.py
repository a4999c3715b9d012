"""Timing helpers shared by the benchmarks: medians of repeated calls, CPU contention, versions."""

import collections
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def median_time(step, *, number, repeat, warmup=1, sync=lambda out: out):
  """Seconds per call of `step()`: median over `repeat` timings of `number` calls.

  `sync(out)` waits for the last call's result (block_until_ready for JAX); it is
  the only host synchronisation, once per timing. Returns (median, samples).
  """
  if number < 1 or repeat < 1:
    raise ValueError(f'number and repeat must be >= 1, got {number}, {repeat}.')
  out = None
  for _ in range(warmup):
    out = step()
  sync(out)
  samples = []
  for _ in range(repeat):
    t0 = time.perf_counter()
    for _ in range(number):
      out = step()
    sync(out)
    samples.append((time.perf_counter() - t0) / number)
  return statistics.median(samples), samples


def cpu_model():
  """The CPU's model name (as lscpu shows it) and the core count."""
  name = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          name = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return {'cpu': name, 'cores': os.cpu_count(), 'platform': platform.platform()}


def _cpu_seconds():
  """(busy CPU s of the whole machine, steal s, CPU s of this process and its waited children)."""
  own = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF,
            resource.RUSAGE_CHILDREN) for f in ('ru_utime', 'ru_stime'))
  try:
    with open('/proc/stat') as f:
      t = [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None, None, own
  hz = os.sysconf('SC_CLK_TCK')
  # user nice system idle iowait irq softirq steal
  return (t[0] + t[1] + t[2] + t[5] + t[6]) / hz, t[7] / hz, own


class CpuContention:
  """CPU time other processes (and the hypervisor's steal) took while a block ran."""

  def __enter__(self):
    self.loadavg = os.getloadavg()[0]
    self._t0, self._start = time.perf_counter(), _cpu_seconds()
    return self

  def __exit__(self, *exc):
    end, wall = _cpu_seconds(), time.perf_counter() - self._t0
    self.result = dict(loadavg_1min_at_start=self.loadavg, wall_s=wall)
    if end[0] is not None and self._start[0] is not None:
      other = max(0.0, (end[0] - self._start[0]) - (end[2] - self._start[2]))
      self.result.update(other_cpu_s=other, steal_s=end[1] - self._start[1],
                         other_cpu_share=other / (wall * (os.cpu_count() or 1)))
    return False


def other_cpu_share(seconds=1.0):
  """Share of the machine's CPU that other processes used over the next `seconds`."""
  with CpuContention() as c:
    time.sleep(seconds)
  return c.result.get('other_cpu_share', 0.0)


def wait_for_idle(max_wait_s, threshold=0.1, log=print):
  """Waits (at most `max_wait_s`) until other processes use < `threshold` of the CPU.

  Returns the seconds waited. On a shared machine this keeps others' jobs out of timings.
  """
  if max_wait_s <= 0:
    return 0.0
  t0 = time.perf_counter()
  share = other_cpu_share()
  if share >= threshold:
    log(f'  waiting up to {max_wait_s:.0f} s for an idle CPU (others use {share:.0%})')
  while share >= threshold and time.perf_counter() - t0 < max_wait_s:
    share = other_cpu_share(5.0)
  return time.perf_counter() - t0


def versions():
  """tljax's stack: the versions every benchmark records."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import tljax  # pylint: disable=g-import-not-at-top
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf_version = tf.__version__
  except ImportError:  # a run on arrays in memory needs no TensorFlow (a GPU image may lack it)
    tf_version = 'not installed'
  return {'tljax': tljax.__version__, 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'flax': flax.__version__, 'optax': optax.__version__, 'numpy': np.__version__,
          'tensorflow': tf_version, 'python': platform.python_version(),
          'jax_backend': jax.default_backend(), 'jax_device': jax.devices()[0].device_kind}


def torch_device(torch):
  """What a user's PyTorch script picks: the GPU when there is one, else the CPU; and its sync."""
  if torch.cuda.is_available():
    return torch.device('cuda'), lambda out: torch.cuda.synchronize()
  torch.set_num_threads(os.cpu_count())
  return torch.device('cpu'), lambda out: out


def torch_versions(torch, device):
  """The peer's versions, with the GPU's name when it ran on one."""
  v = {'torch': torch.__version__}
  if device.type == 'cuda':
    v['torch_device'] = torch.cuda.get_device_name(device)
  return v


def stderr(msg):
  """A progress line on stderr (stdout holds the tables)."""
  print(msg, file=sys.stderr, flush=True)


def run_job(module, job, *, timeout, forward=None):
  """Runs `python -m <module> --peer_job=J --peer_out=O` in a fresh process (Keras fixes its
  backend at import; each framework gets the machine alone); the job is `job` as JSON.

  Returns (result or None, note, contention): the JSON the child wrote to O, or None with a
  one-line note of why not (timed out, failed with its last line). `forward(line)` receives
  each stderr line of the child as it comes (progress lines); None captures them quietly.
  """
  env = dict(os.environ)
  env['KERAS_BACKEND'] = 'tensorflow'
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'peer.json')
    job_path = os.path.join(tmp, 'job.json')
    with open(job_path, 'w') as f:
      json.dump(job, f)
    cmd = [sys.executable, '-m', module, f'--peer_job={job_path}', f'--peer_out={out}']
    tail = collections.deque(maxlen=20)
    with CpuContention() as contention:
      if forward is None:
        try:
          proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                                check=False)
        except subprocess.TimeoutExpired:
          return None, f'timed out after {timeout} s', None
        tail.extend((proc.stderr or proc.stdout).strip().splitlines())
        rc = proc.returncode
      else:
        rc = _stream(cmd, env, timeout, forward, tail)
        if rc is None:
          return None, f'timed out after {timeout} s', None
    if rc != 0 or not os.path.exists(out):
      last = list(tail)[-1:] or ['no output']
      return None, f'failed (exit {rc}): {last[0][:200]}', contention.result
    with open(out) as f:
      return json.load(f), '', contention.result


def _stream(cmd, env, timeout, forward, tail):
  """Runs `cmd`, passing each stderr line to `forward` and keeping the last ones in `tail`;
  its exit status, or None after `timeout` seconds (the child is killed)."""
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  fired = threading.Event()

  def kill():
    fired.set()
    proc.kill()

  timer = threading.Timer(timeout, kill)
  timer.start()
  try:
    for line in proc.stderr:
      line = line.rstrip('\n')
      tail.append(line)
      forward(line)
    rc = proc.wait()
  finally:
    timer.cancel()
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return None if fired.is_set() else rc
