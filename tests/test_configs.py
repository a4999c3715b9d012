"""Every shipped config passes a dry run: one step per case on mock data, exact accounting."""

import glob
import importlib
import json
import os

import pytest

from tests.conftest import XLA_CACHE
from tljax.data import datasets
from tljax import models
from tljax.sweep import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not os.path.basename(p).startswith(('_', 'base')))


def test_every_thesis_test_has_a_config():
  assert {'default', 'test1', 'test2', 'test3', 'test4', 'test5'} <= set(CONFIGS)


def _tiny_folder(root, classes):
  """A folder dataset with one 8x8 PNG per class and split (dry runs only list it)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split in ('train', 'test'):
    for name in classes:
      os.makedirs(os.path.join(root, split, name))
      Image.new('RGB', (8, 8)).save(os.path.join(root, split, name, '0.png'))
  return str(root)


# test3 (EfficientNetB2 at 260 px) runs test2's code path (EfficientNetB0) at the longest
# compile of the suite, and test4 is test2 on a folder target (a folder target with ImageNet
# weights: the mobilenet config): marked slow (pytest -m slow), the others run every time.
SLOW_CONFIGS = ('test3', 'test4')


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow)
                                  if n in SLOW_CONFIGS else n for n in CONFIGS])
def test_config_dry_run(name, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config()
  config.dry_run = True
  config.progress = False
  config.cache_dir = str(tmp_path / 'cache')
  config.device_xla_check = False  # one compile fewer per case (tested in test_summary_fields)
  config.compilation_cache_dir = XLA_CACHE
  for role in ('source', 'target'):  # folder datasets: a tiny tree with the expected classes
    dataset = config[f'{role}_dataset']
    if dataset in datasets.FOLDER_DATASETS:
      classes = datasets.FOLDER_DATASETS[dataset].get('classes', ('a', 'b', 'c'))
      config[f'{role}_data_dir'] = _tiny_folder(tmp_path / role, classes)
  # Shrunk for CI's 2 cores: the first and last cases (every default case runs end to end in
  # test_launch.py), smaller images.
  config.cases = (config.cases[0], config.cases[-1])
  if config.model != 'small_cnn':  # EfficientNet: the cheapest case at the smallest input
    config.cases = config.cases[:1]  # (trainable depthwise layers: test_depthwise_flops.py)
    config.image_size = 32
    if config.model == 'mobilenet_v2' and config.pretrained == 'imagenet':
      config.image_size = models.MOBILENET_V2_IMAGENET_SIZES[0]  # Keras's weights: 96 and up
    config.prefix_cache = False  # B0's prefix steps: test_prefix_cache.py
  summary = runner.train_and_evaluate(config, str(tmp_path / 'w'))
  on_disk = json.loads((tmp_path / 'w' / 'summary.json').read_text())
  assert on_disk['dry_run'] is True
  assert [c['case'] for c in on_disk['cases']] == [
      c if isinstance(c, str) else f'last:{c}' for c in config.cases]
  flops = [c['train_flops_per_example'] for c in summary['cases']]
  assert all(f > 0 for f in flops)
  assert flops == sorted(flops)
  for c in summary['cases']:
    assert c['steps'] == 1
    assert c['status'] == 'ok'
    assert c['train_memory_bytes'] > 0
    assert 0.75 < c['xla_to_analytic_train_flops'] < 1.25, c['xla_to_analytic_train_flops']
    # Memory traffic (docs/accounting.md "Memory traffic"): a dry run's bytes are the real ones.
    assert c['bytes_accessed_per_example'] > 0 and c['edge_traffic_bytes_per_step'] > 0
    assert c['memory_energy_per_example_j'] == c['bytes_accessed_per_example'] * config.e_byte_j
    assert c['energy_with_memory_per_example_j'] == (
        c['energy_per_example_j'] + c['memory_energy_per_example_j'])
  if name == 'default':  # head only (last:1) moves fewer bytes than full fine-tuning (last:23)
    head, full = summary['cases']
    assert head['bytes_accessed_per_example'] < full['bytes_accessed_per_example'] / 5
    assert head['edge_traffic_bytes_per_step'] < full['edge_traffic_bytes_per_step'] / 5
  assert not os.path.exists(os.path.join(config.cache_dir, 'pretrained'))


def test_reverse_directions():
  from configs import test1, test5
  assert (test1.get_config('reverse').source_dataset,
          test1.get_config('reverse').target_dataset) == ('cifar10', 'cifar100')
  assert (test5.get_config('reverse').source_dataset,
          test5.get_config('reverse').target_dataset) == ('mnist', 'svhn_cropped')


def test_thesis_configs_run_frozen_dropout_as_keras_did():
  from configs import base, default
  for name in ('test1', 'test2', 'test3', 'test4', 'test5'):
    module = importlib.import_module(f'configs.{name}')
    assert module.get_config().frozen_dropout == 'keras', name
    if name in ('test1', 'test5'):
      assert module.get_config('reverse').frozen_dropout == 'keras', name
  assert base.get_config().frozen_dropout == default.get_config().frozen_dropout == 'off'
