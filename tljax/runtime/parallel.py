"""The device mesh every step runs on, batch sharding, multi-host start-up and who writes."""

import json
import signal
import zlib

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tljax.runtime import errors
from tljax.runtime import interrupt

_INITIALIZED = []


class ProcessesError(errors.UserError):
  """The processes of a multi-process run cannot go on together (process 0 failed, or they see
  different files)."""


def maybe_initialize(config):
  """jax.distributed.initialize once, when the config asks for several processes."""
  if config.num_processes > 1 and not _INITIALIZED:
    # JAX's preemption service would take SIGTERM from tljax's handler
    # (tljax.runtime.interrupt), which stops every process at the same step itself
    # (stop_requested).
    jax.config.update('jax_enable_preemption_service', False)
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes,
                               process_id=config.process_id)
    _INITIALIZED.append(True)


class Mesh:
  """A 1-D mesh over `devices` (default: every device of every process): batches split along
  'data', everything else replicated. One device makes it the plain single-device case."""

  def __init__(self, devices=None):
    devices = list(jax.devices() if devices is None else devices)
    self.mesh = jax.make_mesh((len(devices),), ('data',), devices=devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P('data'))
    self.num_devices = len(devices)
    self.devices = tuple(devices)

  @classmethod
  def for_config(cls, config):
    """Every device of every process with `data_parallel`, else this process's first one."""
    return cls() if config.data_parallel else cls(jax.local_devices()[:1])

  @classmethod
  def on(cls, device):
    """The one-device mesh on `device` (e.g. costs.counting_device())."""
    return cls([device])

  def check_batch(self, name, size):
    if size % self.num_devices:
      raise ValueError(f'config.{name}={size} is not divisible by the {self.num_devices} devices '
                       'of the data-parallel mesh; use a multiple of it.')

  def put_batch(self, x):
    """A global batch (the same on every process) as an array sharded over the mesh."""
    n = jax.process_count()
    if n == 1:
      return jax.device_put(x, self.batch)
    k = x.shape[0] // n  # each process contributes its own slice of the global batch
    x = x[jax.process_index() * k:(jax.process_index() + 1) * k]
    return jax.make_array_from_process_local_data(self.batch, np.asarray(x))

  def put_replicated(self, tree):
    """`tree`'s arrays replicated on every device of the mesh."""
    if not multi_process():
      return jax.device_put(tree, self.replicated)
    return jax.tree.map(self._replicate, tree)

  def _replicate(self, x):
    """One array onto a mesh that spans processes: via the host (jax.device_put takes only
    host data there), or as it is when it is already there."""
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(self.replicated, x.ndim):
      return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(self._replicate(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), self.replicated)


def default(mesh=None):
  """`mesh`, or the one-device mesh of this process's first device when it is None."""
  return mesh if mesh is not None else Mesh(jax.local_devices()[:1])


def multi_process():
  """Whether this is one of several processes of a jax.distributed run (touches no backend
  before jax.distributed.initialize)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer():
  """Whether this process writes the workdir's files: process 0 (or the only one)."""
  return not multi_process() or jax.process_index() == 0


def on_writer(what, fn, *args):
  """fn(*args) on process 0 only; every process waits for it (a barrier) and fails if it failed.

  Returns fn's result on process 0 and None on the others. `what` names the barrier (all
  processes must reach the same ones in the same order) and the step in the error.
  """
  if not multi_process():
    return fn(*args)
  out = error = None
  if is_writer():
    try:
      out = fn(*args)
    except BaseException as e:  # pylint: disable=broad-except  # raised after the barrier
      error = e
  barrier(what, error is None)
  if error is not None:
    raise error
  return out


def barrier(what, ok=True):
  """Waits for every process (none with one process). Raises on the others when process 0
  passed `ok` False (process 0 raises its own error), and on all when they named different
  barriers."""
  if not multi_process():
    return
  got = multihost_utils.process_allgather(np.array([zlib.crc32(what.encode()), ok], np.int64))
  if len(set(got[:, 0].tolist())) > 1:
    raise ProcessesError(f'The processes of this run reached different barriers ({what!r} here); '
                       'they must run the same config.')
  if not got[0, 1] and not is_writer():  # process 0 raises its own error
    raise ProcessesError(f'Process 0 failed while {what}; its output says why.')


def same_on_all(what, value):
  """Raises on every process unless all processes hold the same JSON-able `value`."""
  if not multi_process():
    return
  h = zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode())
  got = multihost_utils.process_allgather(np.array([h], np.int64))
  if len(set(got[:, 0].tolist())) > 1:
    raise ProcessesError(f'The processes of this run see different {what}: the workdir and cache '
                       'must be one folder that every process reads.')


def stop_requested():
  """Whether a stop signal arrived (interrupt.requested()), at any process: every process
  calls this at the same points, so all stop at the same step."""
  flag = interrupt.requested() is not None
  if not multi_process():
    return flag
  return bool(multihost_utils.process_allgather(np.array([flag], np.int32)).any())


def check_interrupt(detail=''):
  """interrupt.check, agreed by every process: all raise Interrupted when any was signalled."""
  if not multi_process():
    interrupt.check(detail)
  elif stop_requested():
    interrupt.check(detail)
    raise interrupt.Interrupted(signal.SIGTERM, f'{detail}; another process of this run was '
                                'stopped')
