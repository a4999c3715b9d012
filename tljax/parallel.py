"""Data parallelism: a device mesh, batch sharding, replicated state, multi-host start-up."""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

_INITIALIZED = []


def maybe_initialize(config):
  """jax.distributed.initialize once, when the config asks for several processes."""
  if config.num_processes > 1 and not _INITIALIZED:
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes,
                               process_id=config.process_id)
    _INITIALIZED.append(True)


class Mesh:
  """A 1-D mesh over every device of every process: batches split, everything else replicated."""

  def __init__(self):
    self.mesh = jax.make_mesh((jax.device_count(),), ('data',))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P('data'))
    self.num_devices = jax.device_count()

  def check_batch(self, name, size):
    if size % self.num_devices:
      raise ValueError(f'config.{name}={size} is not divisible by the {self.num_devices} devices '
                       'of the data-parallel mesh; use a multiple of it.')

  def put_batch(self, x):
    """A global batch (the same on every process) as an array sharded over the mesh."""
    n = jax.process_count()
    if n > 1:  # each process contributes its own slice of the global batch
      k = x.shape[0] // n
      x = x[jax.process_index() * k:(jax.process_index() + 1) * k]
    return jax.make_array_from_process_local_data(self.batch, np.asarray(x))

  def put_replicated(self, tree):
    return jax.device_put(tree, self.replicated)
