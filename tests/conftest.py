"""Shared test setup: quiet TensorFlow, the repo root importable, shrunken configs."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('KERAS_BACKEND', 'jax')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # pylint: disable=g-import-not-at-top


def shrunk_default(cache_dir):
  """The default experiment, shrunk to seconds: few steps, small batches, a private cache."""
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.pretrain_epochs = 1
  c.epochs = 1
  c.steps_per_epoch = 3
  c.batch_size = 16
  c.eval_batch_size = 128
  c.log_every_steps = 1
  c.progress = False
  c.cache_dir = str(cache_dir)
  c.device_xla_check = False  # one compile fewer per case; on in tests/test_summary_fields.py
  c.compilation_cache = False  # every test compiles what it measures; on in its own test
  return c


@pytest.fixture
def tiny_config(tmp_path):
  return shrunk_default(tmp_path / 'cache')
