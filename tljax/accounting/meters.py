"""Measured energy: a GPU's (NVML) or CPU's (RAPL) energy counter around each run's training."""

import contextlib
import dataclasses
import glob
import os
import re
import time
from typing import Any, Callable

from absl import logging

# config.energy_meter: 'auto' reads NVML on a GPU backend and RAPL on the CPU, where readable.
METERS = ('off', 'auto', 'nvml', 'rapl')
RAPL_ROOT = '/sys/class/powercap'
# A package domain (intel-rapl:0); its sub-domains (intel-rapl:0:0, core and DRAM) are inside it.
_RAPL_PACKAGE = re.compile(r'intel-rapl:\d+')
# The run record's fields of the meter (docs/outputs.md), None where nothing was measured.
RECORD_FIELDS = ('energy_meter', 'idle_power_w', 'measured_energy_j',
                 'measured_energy_per_example_j')
# The clock and sleep the idle measurement and each span use (tests replace them).
clock = time.monotonic
sleep = time.sleep


class Unavailable(Exception):
  """A counter that cannot be read here, with the one line that says why."""


@dataclasses.dataclass
class Counter:
  """A cumulative energy counter: read_j() gives joules since an arbitrary origin."""
  name: str
  read_j: Callable[[], float]


def _nvml_handles(pynvml):
  """The NVML handles of the GPUs this process sees: CUDA_VISIBLE_DEVICES's (indices or UUIDs)
  when it is set, else every GPU."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is None:
    return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
  ids = [v.strip() for v in visible.split(',') if v.strip()]
  return [pynvml.nvmlDeviceGetHandleByIndex(int(v)) if v.isdigit()
          else pynvml.nvmlDeviceGetHandleByUUID(v) for v in ids]


def nvml_counter():
  """NVML's total energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver
  loaded; Volta or newer), summed over the GPUs this process sees, through the official bindings
  (pip install nvidia-ml-py, import pynvml)."""
  try:
    import pynvml  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise Unavailable('NVML energy counter: pynvml is not installed (pip install '
                      'nvidia-ml-py)') from None
  try:
    pynvml.nvmlInit()
    handles = _nvml_handles(pynvml)
    if not handles:
      raise Unavailable('NVML energy counter: NVML sees no GPU')

    def read_j():
      return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles) / 1e3

    read_j()
  except pynvml.NVMLError as e:
    raise Unavailable(f'NVML energy counter not readable: {e}') from None
  return Counter(f'nvml ({len(handles)} GPU{"s" if len(handles) > 1 else ""})', read_j)


def rapl_counter(root=None):
  """RAPL's package energy counters (<root>/intel-rapl:N/energy_uj, µJ; root default
  RAPL_ROOT), summed over the packages; a counter that wraps at its max_energy_range_uj is
  unwrapped."""
  root = root or RAPL_ROOT
  domains = sorted(d for d in glob.glob(os.path.join(root, 'intel-rapl:*'))
                   if _RAPL_PACKAGE.fullmatch(os.path.basename(d)))
  where = os.path.join(root, 'intel-rapl:*', 'energy_uj')
  try:
    if not domains:
      raise OSError('none found')
    ranges = [_read_int(os.path.join(d, 'max_energy_range_uj')) for d in domains]
    last = [_read_int(os.path.join(d, 'energy_uj')) for d in domains]
  except (OSError, ValueError) as e:
    raise Unavailable(f'RAPL counters not readable ({where}: {e})') from None
  total = [0]

  def read_j():
    for i, d in enumerate(domains):
      now = _read_int(os.path.join(d, 'energy_uj'))
      total[0] += (now - last[i]) % ranges[i] if ranges[i] else now - last[i]
      last[i] = now
    return total[0] / 1e6

  return Counter(f'rapl ({len(domains)} package{"s" if len(domains) > 1 else ""})', read_j)


def _read_int(path):
  with open(path, encoding='ascii') as f:
    return int(f.read().strip())


COUNTERS = {'nvml': nvml_counter, 'rapl': rapl_counter}


@dataclasses.dataclass
class Meter:
  """A counter with the idle power measured before the sweep (W), subtracted from each span."""
  kind: str  # 'nvml' or 'rapl'
  counter: Counter
  idle_power_w: float


@dataclasses.dataclass
class Measured:
  """One span's reading: joules above idle (None until the span ends), its seconds, and the
  train step it started at (a resumed run measures only the steps after it)."""
  meter: str
  idle_power_w: float
  start_step: int = 0
  joules: Any = None
  seconds: Any = None


def idle_power_w(counter, seconds):
  """Mean power (W) the counter shows over `seconds` of doing nothing."""
  j0, t0 = counter.read_j(), clock()
  sleep(seconds)
  j1, t1 = counter.read_j(), clock()
  return (j1 - j0) / (t1 - t0) if t1 > t0 else 0.0


def _kind(mode):
  if mode != 'auto':
    return mode
  import jax  # pylint: disable=g-import-not-at-top
  return 'nvml' if jax.default_backend() in ('gpu', 'cuda') else 'rapl'


def make(mode, idle_s):
  """The meter of `mode` (METERS, not 'off') with its idle power measured over `idle_s`
  seconds; None with one logged line when 'auto' finds no readable counter. ValueError when an
  explicitly named counter cannot be read."""
  kind = _kind(mode)
  try:
    counter = COUNTERS[kind]()
  except Unavailable as e:
    if mode == 'auto':
      logging.warning('%s: no measured energy (config.energy_meter=%r).', e, mode)
      return None
    raise ValueError(f'config.energy_meter={mode!r}: {e}.') from None
  idle = idle_power_w(counter, idle_s)
  logging.info('Energy meter %s: idle power %.2f W over %g s, subtracted from each run.',
               counter.name, idle, idle_s)
  return Meter(kind, counter, idle)


_ACTIVE = {}


def get(config):
  """This process's meter for config.energy_meter, made once (its idle power measured then);
  None when 'off', in a dry run, or when 'auto' finds no counter."""
  mode = config.get('energy_meter', 'off')
  if mode == 'off' or config.dry_run:
    return None
  key = (mode, float(config.energy_idle_s))
  if key not in _ACTIVE:
    _ACTIVE[key] = make(mode, config.energy_idle_s)
  return _ACTIVE[key]


def reset():
  """Forgets the process's meters (the next get() measures idle power again)."""
  _ACTIVE.clear()


@contextlib.contextmanager
def measuring(config, ckpt=None):
  """Yields a Measured (None without a meter) whose joules above idle the span's end fills in:
  the counter's difference less idle_power_w x the span's seconds. `ckpt` (the run's
  checkpoints.Checkpoints, or None) gives the step a resumed run starts at."""
  meter = get(config)
  if meter is None:
    yield None
    return
  step = ckpt.latest_step() if ckpt is not None else None
  m = Measured(meter.counter.name, meter.idle_power_w, start_step=int(step or 0))
  j0, t0 = meter.counter.read_j(), clock()
  yield m
  j1, t1 = meter.counter.read_j(), clock()
  m.seconds = t1 - t0
  m.joules = (j1 - j0) - meter.idle_power_w * m.seconds


def record_fields(measured, steps, batch_size):
  """The run record's RECORD_FIELDS from a span's Measured (None: all None): joules above idle,
  and per training example over the steps the span ran (steps - measured.start_step)."""
  if measured is None or measured.joules is None:
    return dict.fromkeys(RECORD_FIELDS)
  examples = (steps - measured.start_step) * batch_size
  return dict(energy_meter=measured.meter, idle_power_w=measured.idle_power_w,
              measured_energy_j=measured.joules,
              measured_energy_per_example_j=measured.joules / examples if examples > 0 else None)
