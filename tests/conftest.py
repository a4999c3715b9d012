"""Shared test setup: quiet TensorFlow, the repo root importable, shrunken configs."""

import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('KERAS_BACKEND', 'jax')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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


# The test files that take longest on 2 cores (--durations, 2026-12-06), handed out first: xdist's
# loadfile gives each worker a file at a time in collection order (setup.cfg turns off its
# reordering by test count), so the suite does not end on one worker running a long file.
LONGEST_FIRST = ('test_reliability.py', 'test_prefix_cache.py', 'test_edge_sweeps.py',
                 'test_configs.py', 'test_multihost.py', 'test_backend.py',
                 'test_depthwise_flops.py', 'test_edge_models.py', 'test_own_data.py',
                 'test_compilation_cache.py', 'test_pretrained_imagenet.py', 'test_launch.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest in order


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
