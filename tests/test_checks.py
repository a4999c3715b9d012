"""The ranges table: every config field covered, every bad value named with what is accepted."""

import importlib
import os
import subprocess
import sys

import pytest

from configs import base
from tljax.config import checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_field_is_in_the_ranges_table():
  fields = set(base.get_config().to_dict())
  assert fields - set(checks.FIELDS) == set(), 'add these fields to tljax/config/checks.py FIELDS'
  assert set(checks.FIELDS) - fields == set(), 'FIELDS lists fields that configs/base.py lacks'


@pytest.mark.parametrize('name', ['default', 'families', 'folders', 'test1', 'test2', 'test3',
                                  'test4', 'test5'])
def test_every_shipped_config_passes(name):
  checks.validate(importlib.import_module(f'configs.{name}').get_config())


@pytest.mark.parametrize('changes, message', [
    (dict(bn_momentum=1.5), 'config.bn_momentum=1.5: must be a number in [0, 1) (BatchNorm'),
    (dict(bn_momentum=-0.1), 'config.bn_momentum=-0.1: must be a number in [0, 1)'),
    (dict(seeds=(-1,)), 'config.seeds=(-1,): must be a non-empty tuple of distinct ints in '
                        '[0, 4294967295]'),
    (dict(seeds=(2**32,)), 'config.seeds=(4294967296,): must be a non-empty tuple'),
    (dict(seeds=(0, 0)), 'config.seeds=(0, 0): must be a non-empty tuple of distinct ints'),
    (dict(seeds=()), 'config.seeds=(): must be a non-empty tuple of distinct ints'),
    (dict(learning_rate=0.0), 'config.learning_rate=0.0: must be a number in (0, 10)'),
    (dict(pretrain_learning_rate=float('nan')),
     'config.pretrain_learning_rate=nan: must be a number in (0, 10)'),
    (dict(e_mac_j=3.2), 'config.e_mac_j=3.2: must be a number in (0, 1e-06] (J per'),
    (dict(e_mac_j=0.0), 'config.e_mac_j=0.0: must be a number in (0, 1e-06]'),
    (dict(eval_batch_size=0), 'config.eval_batch_size=0: must be an int >= 1'),
    (dict(batch_size=True), 'config.batch_size=True: must be an int >= 1'),
    (dict(checkpoint_every_steps=-5), 'config.checkpoint_every_steps=-5: must be an int >= 0'),
    (dict(log_every_steps=0), 'config.log_every_steps=0: must be an int >= 1'),
    (dict(steps_per_epoch=-1), 'config.steps_per_epoch=-1: must be an int >= 0 (0 = whole'),
    (dict(epochs=0), 'config.epochs=0: must be an int >= 1'),
    (dict(image_size=64), "config.image_size=64: model 'small_cnn' takes exactly 32x32"),
    (dict(model='efficientnet_b0', channels=3, image_size=16),
     "config.image_size=16: model 'efficientnet_b0' needs images of at least 32x32"),
    (dict(channels=3), "config.channels=3: model 'small_cnn' takes 1-channel images"),
    (dict(cases=()), 'config.cases=(): must be a non-empty tuple of distinct cases'),
    (dict(cases=(1, 1)), 'config.cases=(1, 1): must be a non-empty tuple of distinct cases'),
    (dict(cases=(1, 2.5)), 'config.cases=(1, 2.5): must be a non-empty tuple of distinct cases'),
    (dict(cases=((('dense/.*',),),)), "config.cases=((('dense/.*',),),): must be a non-empty"),
    (dict(target_classes=(5, -1)), 'config.target_classes=(5, -1): must be a tuple of distinct'),
    (dict(num_processes=2, process_id=2, data_parallel=True),
     'config.process_id=2: must be an int in [0, num_processes) = [0, 2)'),
    (dict(pretrained='imagenet'), "config.pretrained='imagenet': must be one of"),
    (dict(new_head='sometimes'), "config.new_head='sometimes': must be one of"),
    (dict(pretrain_epochs=0), "config.pretrain_epochs=0: must be an int >= 1"),
    (dict(num_processes=2, coordinator_address='h:1'),
     'config.num_processes=2: must be an int >= 1, and 1 unless data_parallel=True'),
])
def test_a_value_out_of_range_names_its_field_and_the_range(changes, message):
  c = base.get_config()
  with c.unlocked():
    for k, v in changes.items():
      c[k] = v
  with pytest.raises(ValueError) as e:
    checks.validate(c)
  assert str(e.value).startswith(message), str(e.value)


def test_ranges_that_depend_on_other_fields_accept_their_values():
  c = base.get_config()
  c.pretrained, c.pretrain_epochs = 'none', 0  # no pretraining: 0 epochs is fine
  c.source_dataset = 'not_used'
  c.num_processes, c.process_id, c.coordinator_address = 2, 1, 'localhost:1234'
  c.data_parallel = True  # several processes share a run only data-parallel
  checks.validate(c)


@pytest.mark.parametrize('arg, message', [
    ('--config.bn_momentum=1.5', 'tljax: error: config.bn_momentum=1.5: must be a number in '
                                 '[0, 1)'),
    ('--config.seeds=(-1,)', 'tljax: error: config.seeds=(-1,): must be a non-empty tuple'),
])
def test_launch_refuses_a_bad_range_before_any_work(tmp_path, arg, message):
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), f'--workdir={tmp_path}/w',
                      arg], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'w').exists()  # nothing written, not even the workdir
