"""The edge models' config fields (alpha, minimalistic), their ImageNet weight files, the
converter's model fields and positional matching, and resuming workdirs made before the fields."""

import os
import urllib.error
import urllib.request

import h5py
import jax
import numpy as np
import pytest

from configs import base
from tljax.config import checks
from tljax import convert
from tljax import models
from tljax.models import imagenet
from tljax.sweep import fingerprints
from tests.conftest import XLA_CACHE

KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/'


def _config(**fields):
  c = base.get_config()
  c.update(fields)
  return c


def _edge(model, **fields):
  return _config(**{'model': model, 'channels': 3, 'image_size': 128, **fields})


@pytest.mark.parametrize('fields', [
    dict(model='mobilenet_v2', alpha=0.35, pretrained='imagenet'),
    dict(model='mobilenet_v2', alpha=1.4, image_size=224, pretrained='imagenet'),
    dict(model='mobilenet_v2', alpha=0.6),  # random weights: any width
    dict(model='mobilenet_v3_small', alpha=0.75, pretrained='imagenet', image_size=64),
    dict(model='mobilenet_v3_large', minimalistic=True, pretrained='imagenet'),
    dict(model='resnet50', pretrained='imagenet', image_size=32),
    dict(model='efficientnet_b0', pretrained='imagenet'),
])
def test_accepted_combinations(fields):
  checks.validate(_edge(**fields))


@pytest.mark.parametrize('fields, message', [
    (dict(model='efficientnet_b0', alpha=0.5),
     r"config.alpha=0.5: alpha is a field of mobilenet_v2, mobilenet_v3_small, "
     r"mobilenet_v3_large; model 'efficientnet_b0' takes none: leave it at 1.0."),
    (dict(model='resnet50', minimalistic=True),
     r"config.minimalistic=True: .*model 'resnet50' takes none: leave it False."),
    (dict(model='mobilenet_v2', alpha=0.0), r'config.alpha=0.0: must be a number > 0'),
    (dict(model='mobilenet_v2', alpha=0.6, pretrained='imagenet'),
     r"config.alpha=0.6: with pretrained='imagenet': Keras has ImageNet weights for "
     r"mobilenet_v2 at alpha 0.35, 0.5, 0.75, 1.0, 1.3 or 1.4, not alpha=0.6."),
    (dict(model='mobilenet_v2', alpha=0.35, image_size=100, pretrained='imagenet'),
     r"config.image_size=100: model 'mobilenet_v2' with pretrained='imagenet' takes 96, 128, "
     r'160, 192 or 224'),
    (dict(model='mobilenet_v3_small', alpha=0.75, minimalistic=True, pretrained='imagenet'),
     r'config.alpha=0.75: .*mobilenet_v3_small minimalistic at alpha 1.0, not alpha=0.75.'),
    (dict(model='mobilenet_v3_large', alpha=0.5, pretrained='imagenet'),
     r'config.alpha=0.5: .*mobilenet_v3_large at alpha 0.75 or 1.0, not alpha=0.5.'),
])
def test_refused_combinations_name_what_is_accepted(fields, message):
  with pytest.raises(ValueError, match=message) as e:
    checks.validate(_edge(**fields))
  assert '\n' not in str(e.value)


def test_small_cnn_has_no_imagenet_weights():
  with pytest.raises(ValueError, match="'imagenet' needs a model with Keras ImageNet weights: "
                                       'efficientnet_b0, .*resnet50'):
    checks.validate(_config(pretrained='imagenet'))


def test_create_refuses_a_field_the_model_lacks():
  assert models.create('resnet50', alpha=1.0, minimalistic=False).num_classes is None
  with pytest.raises(ValueError, match="alpha=0.5: .*model 'resnet50' takes none"):
    models.create('resnet50', alpha=0.5)
  assert models.model_fields('mobilenet_v3_small', _config(alpha=0.75)) == {
      'alpha': 0.75, 'minimalistic': False}
  assert models.model_fields('efficientnet_b0', _config(alpha=0.75)) == {}


@pytest.mark.parametrize('model, fields, path, md5', [
    ('mobilenet_v2', dict(alpha=0.35, image_size=128),
     'mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5', None),
    ('mobilenet_v2', dict(alpha=1.0, image_size=224),
     'mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5', None),
    ('mobilenet_v2', dict(alpha=0.5, image_size=96),
     'mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5', None),
    ('mobilenet_v3_small', dict(alpha=0.75),
     'mobilenet_v3/weights_mobilenet_v3_small_224_0.75_float_no_top_v2.h5',
     'ebdb5cc8e0b497cd13a7c275d475c819'),
    ('mobilenet_v3_large', dict(minimalistic=True),
     'mobilenet_v3/weights_mobilenet_v3_large_minimalistic_224_1.0_float_no_top_v2.h5',
     'ec5221f64a2f6d1ef965a614bdae7973'),
    ('resnet50', {}, 'resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5',
     '4d473c1dd8becc155b73f8504c6f6626'),
])
def test_keras_weight_files(model, fields, path, md5):
  assert imagenet.source(model, **fields) == (path, md5)
  assert imagenet.url(model, **fields) == KERAS_URL + path


def test_keras_file_names_and_md5s_are_those_of_keras_applications():
  """Keras's own source names the files and hashes (MobileNetV2's: no hash)."""
  # pylint: disable-next=g-import-not-at-top
  from keras.src.applications import mobilenet_v2, mobilenet_v3, resnet
  assert imagenet.KERAS_APPLICATIONS_URL + 'mobilenet_v2/' == mobilenet_v2.BASE_WEIGHT_PATH
  assert imagenet.KERAS_APPLICATIONS_URL + 'mobilenet_v3/' == mobilenet_v3.BASE_WEIGHT_PATH
  assert imagenet.KERAS_APPLICATIONS_URL + 'resnet/' == resnet.BASE_WEIGHTS_PATH
  assert imagenet.MOBILENET_V3_MD5 == {k: v[1] for k, v in mobilenet_v3.WEIGHTS_HASHES.items()}
  assert imagenet.FILES['resnet50'][1] == resnet.WEIGHTS_HASHES['resnet50'][1]


def test_offline_names_the_file_the_url_and_where_to_put_it(tmp_path, monkeypatch):
  calls = []

  def offline(*args, **kwargs):
    calls.append(args[0])
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')

  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  with pytest.raises(imagenet.WeightsUnavailableError) as e:
    imagenet.imagenet_variables('mobilenet_v2', str(tmp_path), alpha=0.35, image_size=128)
  msg = str(e.value)
  name = 'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5'
  assert calls == [KERAS_URL + 'mobilenet_v2/' + name]
  assert f'Download {KERAS_URL}mobilenet_v2/{name} (Keras publishes no md5 for it)' in msg
  assert f'put it at {tmp_path / name} ;' in msg and '\n' not in msg
  assert os.listdir(tmp_path) == []
  with pytest.raises(ValueError, match='not image_size=100'):
    imagenet.imagenet_variables('mobilenet_v2', str(tmp_path), alpha=0.35, image_size=100)
  assert imagenet.checkpoint_dir('mobilenet_v2', str(tmp_path), alpha=0.35, image_size=128) == str(
      tmp_path / 'mobilenet_v2_alpha0.35_128_imagenet')
  assert imagenet.checkpoint_dir('mobilenet_v3_large', str(tmp_path), minimalistic=True) == str(
      tmp_path / 'mobilenet_v3_large_alpha1.0_minimalistic_imagenet')
  assert imagenet.checkpoint_dir('resnet50', str(tmp_path)) == str(tmp_path / 'resnet50_imagenet')


def _fake_keras_file(path, model, fields, rename=None):
  """A legacy Keras HDF5 weights file of the model's base, every variable random."""
  model_obj = models.create(model, **fields)
  expected, kinds = convert.expected_variables(model, **fields)
  keras_names = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}
  rng = np.random.default_rng(0)
  with h5py.File(path, 'w') as f:
    names = [l.name for l in model_obj.keras_layers()]
    f.attrs['layer_names'] = [(rename or {}).get(n, n).encode() for n in names]
    for layer in names:
      g = f.create_group((rename or {}).get(layer, layer))
      weight_names = []
      for col in ('params', 'batch_stats'):
        for key, s in expected.get(col, {}).get(layer, {}).items():
          w = key if kinds[layer] != 'BatchNormalization' else keras_names[key]
          shape = s.shape[:2] + s.shape[:1:-1] if kinds[layer] == 'DepthwiseConv2D' else s.shape
          full = f'{g.name[1:]}/{w}:0'
          g.create_dataset(full, data=rng.uniform(0.5, 1.5, shape).astype(np.float32))
          weight_names.append(full.encode())
      g.attrs['weight_names'] = weight_names
  return str(path)


def test_convert_takes_the_model_fields_and_names_them_on_a_mismatch(tmp_path):
  path = _fake_keras_file(tmp_path / 'a.h5', 'mobilenet_v2', {'alpha': 0.35})
  variables = convert.keras_h5_to_variables(path, 'mobilenet_v2', alpha=0.35)
  assert sum(x.size for x in jax.tree.leaves(variables)) == 410_208
  with pytest.raises(ValueError, match=r'shape mismatch for block_1_project/kernel: file has '
                                       r'\(1, 1, 48, 8\), mobilenet_v2 \(alpha=0.5\) '
                                       r'params/block_1_project/kernel needs \(1, 1, 48, 16\)'):
    convert.keras_h5_to_variables(path, 'mobilenet_v2', alpha=0.5)


def test_a_file_with_other_layer_names_is_matched_by_position_as_keras_does(tmp_path):
  """Keras loads legacy HDF5 weights by the order of the weighted layers; so does the converter
  when no file layer has a model layer's name."""
  fields = {'minimalistic': True}
  named = _fake_keras_file(tmp_path / 'a.h5', 'mobilenet_v3_small', fields)
  names = [l.name for l in models.create('mobilenet_v3_small', **fields).keras_layers()]
  renamed = _fake_keras_file(tmp_path / 'b.h5', 'mobilenet_v3_small', fields,
                             rename={n: f'layer_{i}' for i, n in enumerate(names)})
  want = convert.keras_h5_to_variables(named, 'mobilenet_v3_small', **fields)
  got = convert.keras_h5_to_variables(renamed, 'mobilenet_v3_small', **fields)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  partly = _fake_keras_file(tmp_path / 'c.h5', 'mobilenet_v3_small', fields,
                            rename={'conv': 'stem_conv'})  # one name off: strict by name
  with pytest.raises(ValueError, match="layer 'stem_conv' has weights .*no such layer"):
    convert.keras_h5_to_variables(partly, 'mobilenet_v3_small', **fields)


def test_converted_checkpoint_records_and_checks_the_fields(tmp_path):
  path = _fake_keras_file(tmp_path / 'a.h5', 'mobilenet_v2', {'alpha': 0.35})
  out = convert.main(['convert', '--model=mobilenet_v2', '--alpha=0.35', f'--keras_h5={path}',
                      f'--out={tmp_path / "ckpt"}'])
  assert convert.converted_metadata(out)['fields'] == {'alpha': 0.35}
  loaded = convert.load_converted(out, 'mobilenet_v2', alpha=0.35)
  assert loaded['params']['Conv1']['kernel'].shape[-1] == 16
  with pytest.raises(ValueError, match='with alpha=0.35, not 1.0'):
    convert.load_converted(out, 'mobilenet_v2', alpha=1.0)


def test_workdirs_made_before_the_model_fields_resume():
  old = base.get_config().to_dict()
  del old['alpha'], old['minimalistic']
  new = base.get_config()
  assert fingerprints.run_fingerprint(old, {}) == fingerprints.run_fingerprint(new, {})
  assert fingerprints.config_diff(old, new.to_dict()) == {}
  new.alpha = 0.35
  assert fingerprints.run_fingerprint(old, {}) != fingerprints.run_fingerprint(new, {})
  assert fingerprints.config_diff(old, new.to_dict()) == {'alpha': (1.0, 0.35)}


def _imagenet_config(tmp_path):
  from configs import mobilenet  # pylint: disable=g-import-not-at-top
  c = mobilenet.get_config()
  c.update(dict(target_dataset='digits', target_classes=(0, 1, 2), image_size=96,
                cases=('last:0',), seeds=(0,), epochs=1, steps_per_epoch=2, batch_size=8,
                eval_batch_size=64, progress=False, cache_dir=str(tmp_path / 'cache'),
                prefix_cache=False, device_xla_check=False, proxies=False,
                compilation_cache_dir=XLA_CACHE))
  return c


def test_a_sweep_uses_the_converted_weights_of_its_alpha_and_size(tmp_path):
  config = _imagenet_config(tmp_path)
  like, _ = convert.expected_variables('mobilenet_v2', alpha=0.35)
  rng = np.random.default_rng(0)
  fake = jax.tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(np.float32), like)
  convert.save_converted(fake, imagenet.checkpoint_dir('mobilenet_v2', config.cache_dir,
                                                      alpha=0.35, image_size=96),
                         {'model': 'mobilenet_v2', 'fields': {'alpha': 0.35}})
  from tljax.sweep import runner  # pylint: disable=g-import-not-at-top
  summary = runner.train_and_evaluate(config, str(tmp_path / 'w'))
  run = summary['runs'][0]
  assert summary['pretraining']['0']['source'] == 'imagenet'
  assert run['status'] == 'ok' and run['trainable_conv_layers'] == 0
  assert run['trainable_params'] == 1280 * 128 + 128 + 2 * 128 + 128 * 3 + 3


def test_offline_a_sweep_names_the_mobilenet_file_before_compiling(tmp_path, monkeypatch):
  from tljax.training import case as case_lib  # pylint: disable=g-import-not-at-top
  from tljax.sweep import runner  # pylint: disable=g-import-not-at-top

  def refuse(*a, **k):
    raise OSError('network is unreachable')

  monkeypatch.setattr(urllib.request, 'urlopen', refuse)
  monkeypatch.setattr(case_lib, 'case_parts',
                      lambda *a, **k: pytest.fail('compiled before asking for the weights'))
  with pytest.raises(imagenet.WeightsUnavailableError) as e:
    runner.train_and_evaluate(_imagenet_config(tmp_path), str(tmp_path / 'w'))
  assert ('mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5'
          in str(e.value))
