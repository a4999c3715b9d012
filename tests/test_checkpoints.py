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
