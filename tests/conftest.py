"""Shared test setup: quiet TensorFlow, the repo root importable, shrunken configs."""

import contextlib
import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('KERAS_BACKEND', 'jax')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

# One persistent XLA compilation cache for the whole test session (both xdist workers): the
# shrunk configs compile the same steps in many tests, and a loaded executable is the compiled
# one (tests/test_compilation_cache.py checks the numbers are equal). A fresh directory per
# session, made by the controlling process (the workers inherit its environment) and removed
# at its end, so no test ever loads another pytest run's (or another jaxlib's) executables.
_OWNS_XLA_CACHE = 'TLJAX_TESTS_XLA_CACHE' not in os.environ
if _OWNS_XLA_CACHE:
  os.environ['TLJAX_TESTS_XLA_CACHE'] = tempfile.mkdtemp(prefix='tljax-tests-xla-')
XLA_CACHE = os.environ['TLJAX_TESTS_XLA_CACHE']


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWNS_XLA_CACHE and 'PYTEST_XDIST_WORKER' not in os.environ:
    shutil.rmtree(XLA_CACHE, ignore_errors=True)


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
  c.proxies = False  # seconds per sweep; on in tests/test_proxies_sweep.py
  c.compilation_cache_dir = XLA_CACHE
  return c


@pytest.fixture
def tiny_config(tmp_path):
  return shrunk_default(tmp_path / 'cache')


@contextlib.contextmanager
def zero_kernels():
  """Keras's random kernel initializers give zeros while it lasts: no jax compile per kernel
  shape (~15 s of CPU a large model), for models whose every weight is set afterwards or whose
  shapes alone are read. Yields the MonkeyPatch, for more patches of the same extent."""
  from keras.src.initializers import random_initializers  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(random_initializers.VarianceScaling, '__call__',
               lambda self, shape, dtype=None: np.zeros(shape, dtype or 'float32'))
    yield mp
