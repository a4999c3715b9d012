"""Asynchronous checkpoints: what `save` was given is what comes back, even when the next steps
donate the state's buffers while orbax is still writing."""

import jax
import numpy as np

from tljax.training import case as case_lib
from tljax.training import checkpoints
from tljax.training import compiled


def _batch(config, seed):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(config.batch_size, 32, 32, 1)).astype(np.float32)
  y = rng.integers(0, 5, config.batch_size).astype(np.int32)
  return x, y


def _bytes(state):
  return [np.asarray(v).tobytes() for v in jax.tree.leaves(checkpoints._to_tree(jax.device_get(state)))]  # pylint: disable=protected-access


def test_async_save_survives_donating_steps(tiny_config, tmp_path):
  case = case_lib.make_case(tiny_config, 23, num_classes=5)
  train_c = compiled.compile_steps(case.model, case.tx, case.trainable, case.state, tiny_config,
                                   eval_batch=16).train
  state, _ = train_c(case.state, *_batch(tiny_config, 0))
  ckpt = checkpoints.Checkpoints(str(tmp_path / 'ckpt'))
  assert ckpt.asynchronous  # one process
  saved = _bytes(state)
  ckpt.save(state, {'step': 1, 'wall_s': 0.0})
  for i in range(1, 6):  # the train step donates `state`: its buffers are reused at once
    state, _ = train_c(state, *_batch(tiny_config, i))
  ckpt.close()
  back, meta = checkpoints.Checkpoints(str(tmp_path / 'ckpt')).restore(case.state)
  assert meta['step'] == 1 and _bytes(back) == saved
  assert _bytes(state) != saved


def test_sync_when_asked(tmp_path, tiny_config):
  case = case_lib.make_case(tiny_config, 1, num_classes=5)
  ckpt = checkpoints.Checkpoints(str(tmp_path / 'c'), asynchronous=False)
  ckpt.save(case.state, {'step': 3, 'wall_s': 0.0})
  assert ckpt.latest_step() == 3 and (tmp_path / 'c' / '3').is_dir()  # on disk at return
  ckpt.close()


def test_a_paused_run_goes_on_from_memory_with_what_the_disk_holds(tiny_config, tmp_path,
                                                                     monkeypatch):
  """A search's rung: save(keep=True) holds the state, so the next part restores it without
  reading it back; the disk gets the same values (a rerun after a stop reads those)."""
  case = case_lib.make_case(tiny_config, 23, num_classes=5)
  paused = checkpoints.Paused(lambda: 1 << 30)
  ckpt = paused.open('run', str(tmp_path / 'ckpt'))
  saved = _bytes(case.state)
  ckpt.save(case.state, {'step': 4, 'wall_s': 1.5, 'pending': [{'loss': [0.25, 'float32']}]},
            keep=True)
  assert ckpt.kept_bytes() == sum(len(b) for b in saved)
  paused.put('run', ckpt, True)
  assert paused.open('run', str(tmp_path / 'ckpt')) is ckpt and not paused.opened
  monkeypatch.setattr(ckpt._mngr, 'restore', None)  # pylint: disable=protected-access
  assert ckpt.latest_step() == 4
  back, meta = ckpt.restore(case.state)
  assert _bytes(back) == saved and meta == {'step': 4, 'wall_s': 1.5,
                                            'pending': [{'loss': [0.25, 'float32']}]}
  assert ckpt.kept is None  # given up: the next train step donates it
  monkeypatch.undo()
  ckpt.close()
  disk, disk_meta = checkpoints.Checkpoints(str(tmp_path / 'ckpt')).restore(case.state)
  assert _bytes(disk) == saved and disk_meta == meta


def test_paused_keeps_within_its_budget_and_not_past_a_later_step_on_disk(tiny_config,
                                                                          tmp_path):
  case = case_lib.make_case(tiny_config, 1, num_classes=5)
  for budget, kept in ((0, False), (1 << 30, True)):
    paused = checkpoints.Paused(lambda b=budget: b)
    ckpt = paused.open('run', str(tmp_path / str(budget)))
    ckpt.save(case.state, {'step': 2, 'wall_s': 0.0}, keep=True)
    paused.put('run', ckpt, True)
    assert ('run' in paused.opened) == kept
    if not kept:  # closed: the next part reads its checkpoint back
      assert ckpt.kept is None and (tmp_path / '0' / '2').is_dir()
  (tmp_path / str(1 << 30) / '7').mkdir()  # another process went on with the run
  again = paused.open('run', str(tmp_path / str(1 << 30)))
  assert again is ckpt and again.kept is None
  paused.put('run', again, False)  # finished: closed
  assert not paused.opened
