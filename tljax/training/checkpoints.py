"""Checkpoints of one run's train state (orbax): saved asynchronously, restored strictly."""

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """The latest train state of one case (orbax, atomic: a step dir is complete or absent).

  Saves are asynchronous in a single process: `save` returns once the arrays are copied to host
  memory (so the next step may donate them) and orbax writes them in a background thread; the
  next save, `restore`, `wait` and `close` wait for it. With several processes (jax.distributed)
  every process creates, saves, restores and closes it collectively, in the same order, and
  each save completes before `save` returns: orbax's multi-host mode (primary host 0 writes the
  metadata and finalises the step, each array shard is written once, barriers in between).
  """

  def __init__(self, directory, asynchronous=None):
    self.directory = os.path.abspath(directory)
    self.asynchronous = jax.process_count() == 1 if asynchronous is None else asynchronous
    self._mngr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=self.asynchronous))

  def latest_step(self):
    return self._mngr.latest_step()

  def save(self, state, meta):
    tree = _to_tree(state)
    self._mngr.save(int(meta['step']), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    if not self.asynchronous:
      self.wait()

  def wait(self):
    """Blocks until the last save is on disk."""
    self._mngr.wait_until_finished()

  def restore(self, like_state):
    """(state, meta) of the latest checkpoint, in the structure of `like_state`."""
    self.wait()
    step = self.latest_step()
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          _to_tree(like_state))  # placed like `like_state` (e.g. replicated)
    try:
      out = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
      raise ValueError(f'The checkpoint {self.directory}/{step} cannot be read ({e}); delete '
                       f'{self.directory} to rerun this case from its start, or pass '
                       '--config.restart=True.') from e
    return _from_tree(like_state, out.state), dict(out.meta)

  def close(self):
    """Waits for the last save, then releases orbax's threads."""
    self._mngr.close()


def _to_tree(state):
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'rng': jax.random.key_data(state.rng)}


def _from_tree(like_state, tree):
  return like_state.replace(step=tree['step'], params=tree['params'],
                            batch_stats=tree['batch_stats'], opt_state=tree['opt_state'],
                            rng=jax.random.wrap_key_data(tree['rng']))
