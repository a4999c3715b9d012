"""Checkpoints of one run's train state (orbax): saved asynchronously, restored strictly; a run
paused at a search's rung keeps its open checkpoints and saved state in memory (Paused)."""

import json
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
    self.kept = None  # (step, state, meta) of the last save(keep=True), until restored

  def latest_step(self):
    return self.kept[0] if self.kept is not None else self._mngr.latest_step()

  def save(self, state, meta, keep=False):
    """Saves `state` with `meta` (JSON) at meta['step']; with `keep` (one process only) also
    holds both in memory, for a restore that needs no reading back (the same values)."""
    tree = _to_tree(state)
    self._mngr.save(int(meta['step']), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    self.kept = ((int(meta['step']), state, json.loads(json.dumps(meta)))
                 if keep and self.asynchronous else None)
    if not self.asynchronous:
      self.wait()

  def kept_bytes(self):
    return 0 if self.kept is None else sum(x.nbytes for x in jax.tree.leaves(_to_tree(
        self.kept[1])))

  def wait(self):
    """Blocks until the last save is on disk."""
    self._mngr.wait_until_finished()

  def restore(self, like_state):
    """(state, meta) of the latest checkpoint, in the structure of `like_state`: the state
    save(keep=True) holds (given up: the next step donates it), else read from disk."""
    if self.kept is not None:
      _, state, meta = self.kept
      self.kept = None
      return _from_tree(like_state, _to_tree(state)), meta
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
    """Waits for the last save, then releases orbax's threads (and a kept state)."""
    self.kept = None
    self._mngr.close()


class Paused:
  """The open Checkpoints of runs paused at a search's rung, each with the state it saved, kept
  for the run's next part while their states take at most budget() bytes together (another is
  closed: its next part reads its checkpoint back)."""

  def __init__(self, budget):
    self.budget, self.opened = budget, {}

  def open(self, run, directory):
    """Run `run`'s Checkpoints in `directory`: the ones its pause kept (their state dropped when
    a later step is on disk: another process went on with the run), else new ones."""
    ckpt = self.opened.pop(run, None)
    if ckpt is None:
      return Checkpoints(directory)
    if ckpt.kept is not None and _disk_steps(ckpt.directory, ckpt.kept[0]):
      ckpt.kept = None
    return ckpt

  def put(self, run, ckpt, paused):
    """Keeps the Checkpoints of run `run` when it `paused` holding its state within the budget;
    else closes them."""
    held = sum(c.kept_bytes() for c in self.opened.values())
    if paused and ckpt.kept is not None and held + ckpt.kept_bytes() <= self.budget():
      self.opened[run] = ckpt
    else:
      ckpt.close()

  def release(self, run=None):
    """Closes run `run`'s Checkpoints (None: all): their saves finish on disk."""
    for r in ([run] if run is not None else list(self.opened)):
      ckpt = self.opened.pop(r, None)
      if ckpt is not None:
        ckpt.close()


def _disk_steps(directory, after):
  """The finished step directories in `directory` later than step `after`."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return [n for n in names if n.isdigit() and int(n) > after]


def _to_tree(state):
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'rng': jax.random.key_data(state.rng)}


def _from_tree(like_state, tree):
  return like_state.replace(step=tree['step'], params=tree['params'],
                            batch_stats=tree['batch_stats'], opt_state=tree['opt_state'],
                            rng=jax.random.wrap_key_data(tree['rng']))
