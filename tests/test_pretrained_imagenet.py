"""pretrained='imagenet': the converted checkpoint in the cache is used as is; offline, a clear error."""

import jax
import numpy as np
import pytest

from configs import test2
from tljax import convert
from tljax.models import imagenet
from tljax.sweep import runner
from tljax.training import case as case_lib


def _config(tmp_path):
  c = test2.get_config()
  c.target_dataset = 'digits'  # offline: grayscale digits repeated to RGB
  c.target_classes = (0, 1, 2)
  c.image_size = 32
  c.cases = (0,)
  c.epochs = 1
  c.steps_per_epoch = 2
  c.batch_size = 8
  c.eval_batch_size = 64
  c.progress = False
  c.cache_dir = str(tmp_path / 'cache')
  c.prefix_cache = False  # fewer compiles on CI's 2 cores (the prefix steps: test_prefix_cache)
  c.device_xla_check = False
  return c


def _cache_fake_weights(config):
  """Random B0 weights saved as converted ImageNet weights in config.cache_dir; returned."""
  like, _ = convert.expected_variables('efficientnet_b0')
  rng = np.random.default_rng(0)
  fake = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), like)
  fake['batch_stats'] = jax.tree.map(np.abs, fake['batch_stats'])
  convert.save_converted(fake, imagenet.checkpoint_dir('efficientnet_b0', config.cache_dir),
                         {'model': 'efficientnet_b0'})
  return fake


def test_cached_converted_weights_are_the_frozen_base(tmp_path):
  config = _config(tmp_path)
  fake = _cache_fake_weights(config)
  case = case_lib.make_case(config, 0, num_classes=3,
                         pretrained=imagenet.imagenet_variables('efficientnet_b0', config.cache_dir))
  for layer in ('stem_conv', 'block1a_dwconv', 'top_conv'):
    assert np.asarray(case.variables['params'][layer]['kernel']).tobytes() == \
        fake['params'][layer]['kernel'].tobytes()
  assert case.trainable_names == ('global_average_pooling2d', 'dense', 'batch_normalization',
                                  'dropout', 'dense_1')


# A B0 sweep compiles its train and eval steps (60-80 s of the suite on 2 cores): slow. Every
# time, the test above checks the cached weights become the case's, the offline test below that
# a sweep asks for them, and test_configs.py's dry run of test2 this config's sweep path.
@pytest.mark.slow
def test_a_sweep_fine_tunes_the_cached_converted_weights(tmp_path):
  config = _config(tmp_path)
  _cache_fake_weights(config)
  summary = runner.train_and_evaluate(config, str(tmp_path / 'w'))
  c = summary['cases'][0]
  assert summary['pretraining']['0']['source'] == 'imagenet'
  assert c['status'] == 'ok' and c['trainable_conv_layers'] == 0
  assert c['trainable_params'] == 1280 * 128 + 128 + 2 * 128 + 128 * 3 + 3


def test_offline_imagenet_weights_name_the_url_and_the_path(tmp_path, monkeypatch):
  def refuse(*a, **k):
    raise OSError('network is unreachable')
  monkeypatch.setattr(imagenet.urllib.request, 'urlopen', refuse)
  monkeypatch.setattr(case_lib, 'case_parts',
                      lambda *a, **k: pytest.fail('compiled before asking for the weights'))
  config = _config(tmp_path)
  with pytest.raises(imagenet.WeightsUnavailableError) as e:
    runner.train_and_evaluate(config, str(tmp_path / 'w'))
  msg = str(e.value)
  assert 'https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5' in msg
  assert str(tmp_path / 'cache') in msg
