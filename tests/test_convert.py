"""Tests of tljax.convert and tljax.models.imagenet against Keras-written EfficientNet weight files."""

import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import hashlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import io
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import h5py
import jax
import keras
from keras.src.applications import efficientnet as keras_efficientnet
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils
import numpy as np
import pytest

from tests.conftest import zero_kernels
from tljax import convert
from tljax import models
from tljax.models import imagenet

# Keras's own variables trip a numpy 2 deprecation when written to HDF5; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERAS_BUILDERS = {'efficientnet_b0': keras_efficientnet.EfficientNetB0,
                  'efficientnet_b2': keras_efficientnet.EfficientNetB2}


def build_keras_imagenet(model_name, size):
  """keras.applications's weights='imagenet' graph (extra Rescaling), fetching nothing."""
  keras.backend.clear_session()  # Keras's auto names: rescaling, normalization, rescaling_1
  with zero_kernels() as mp:  # weights are overwritten below
    mp.setattr(file_utils, 'get_file', lambda *a, **k: '/nonexistent/imagenet.h5')
    mp.setattr(keras.Model, 'load_weights', lambda self, *a, **k: None)
    return KERAS_BUILDERS[model_name](include_top=False, weights='imagenet',
                                      input_shape=(size, size, 3))


def randomize(model, rng):
  """Every weight random; BN moving stats from a calibration pass, then perturbed.

  With moving stats drawn blindly, inference-mode BN does not normalise and a
  random EfficientNet either explodes or maps every input to the same output;
  calibrated on random images, it behaves like a trained one.
  """
  for layer in model.layers:
    for w in layer.weights:
      name, shape = w.path.rsplit('/', 1)[-1], tuple(w.shape)
      if name == 'kernel':
        fan_in = shape[0] * shape[1] if type(layer).__name__ == 'DepthwiseConv2D' else np.prod(shape[:-1])
        v = rng.normal(0, np.sqrt(1 / fan_in), shape)
      elif name in ('gamma', 'moving_variance'):
        v = rng.uniform(0.5, 1.5, shape)
      elif name == 'mean':
        v = rng.uniform(0.3, 0.6, shape)
      elif name == 'variance':
        v = rng.uniform(0.15, 0.3, shape)
      elif name == 'count':
        v = rng.integers(1, 10**6)
      else:  # beta, moving_mean, bias
        v = rng.normal(0, 0.1, shape)
      w.assign(np.asarray(v, dtype=w.dtype))
  for layer in model.layers:
    if hasattr(layer, 'finalize_state'):
      layer.finalize_state()  # Normalization caches its mean and variance
  size = model.input_shape[1]
  calibrate_batch_norms(model, rng.uniform(0, 255, (4, size, size, 3)).astype(np.float32))
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      std = np.sqrt(layer.moving_variance.numpy())
      layer.moving_mean.assign(layer.moving_mean.numpy() + rng.normal(0, 0.1, std.shape) * std)
      layer.moving_variance.assign(layer.moving_variance.numpy() * rng.uniform(0.8, 1.25, std.shape))


def calibrate_batch_norms(model, x):
  """Moving stats := batch stats of one training-mode pass on x (momentum 0, dropout off)."""
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
  saved = [(l, l.momentum) for l in bns], [(l, l.rate) for l in drops]
  for l in bns:
    l.momentum = 0.0
  for l in drops:
    l.rate = 0.0
  step = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=True)[1])
  new = step([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables], x)
  for var, value in zip(model.non_trainable_variables, new):
    var.assign(value)
  for l, m in saved[0]:
    l.momentum = m
  for l, r in saved[1]:
    l.rate = r


def to_keras2_names(src, dst):
  """Copy of a Keras-3-written file with Keras 2's names: ':0' suffixes, 'depthwise_kernel'."""
  shutil.copyfile(src, dst)
  with h5py.File(dst, 'r+') as f:
    for layer in f.attrs['layer_names']:
      g = f[layer]
      new_names = []
      for old in g.attrs['weight_names']:
        old = _s(old)
        layer_part, w = old.rsplit('/', 1)
        if layer_part.endswith('dwconv') and w == 'kernel':
          w = 'depthwise_kernel'
        new = f'{layer_part}/{w}:0'
        g.move(old, new)
        new_names.append(new.encode('utf8'))
      if new_names:
        g.attrs['weight_names'] = new_names
  return dst


def _umask():
  umask = os.umask(0)
  os.umask(umask)
  return umask


def _s(name):
  return name.decode('utf8') if isinstance(name, bytes) else str(name)


def md5(path):
  return hashlib.md5(open(path, 'rb').read()).hexdigest()


@pytest.fixture(scope='module')
def keras_files(tmp_path_factory):
  """Per model: randomised Keras model -> .h5 (Keras 3 names) and a Keras 2-named copy."""
  out, rng = {}, np.random.default_rng(0)
  for model_name in KERAS_BUILDERS:
    d = tmp_path_factory.mktemp(model_name)
    km = build_keras_imagenet(model_name, 224)
    randomize(km, rng)
    k3 = str(d / 'keras3.h5')
    with h5py.File(k3, 'w') as f:
      legacy_h5_format.save_weights_to_hdf5_group(f, km)
    # Load it back through Keras's own loader, as keras.applications does.
    with h5py.File(k3, 'r') as f:
      legacy_h5_format.load_weights_from_hdf5_group(f, km)
    out[model_name] = {'keras3': k3, 'keras2': to_keras2_names(k3, str(d / 'keras2.h5')),
                       'keras_224': km}
  return out


@pytest.fixture(scope='module')
def b0_file(keras_files):
  return keras_files['efficientnet_b0']['keras3']


def keras_features(keras_files, model_name, size, x):
  if size == 224:
    km = keras_files[model_name]['keras_224']
  else:
    km = build_keras_imagenet(model_name, size)
    with h5py.File(keras_files[model_name]['keras3'], 'r') as f:
      legacy_h5_format.load_weights_from_hdf5_group(f, km)
  return np.asarray(km.predict(x, verbose=0))


@pytest.mark.parametrize('model_name', ['efficientnet_b0', 'efficientnet_b2'])
@pytest.mark.parametrize('size', [224, 65])
def test_feature_maps_match_keras(keras_files, model_name, size):
  rng = np.random.default_rng(size)
  x = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
  want = keras_features(keras_files, model_name, size, x)
  model = models.create(model_name)
  apply = jax.jit(model.apply)
  scale = np.abs(want).max()
  # Random inputs must give clearly different features, or the comparison proves little.
  assert np.abs(want[0] - want[1]).max() > 0.3 * scale
  converted = {}
  for naming in ('keras3', 'keras2'):
    variables = convert.keras_h5_to_variables(keras_files[model_name][naming], model_name)
    got = np.asarray(apply(variables, x))
    assert got.shape == want.shape
    err = np.abs(got - want).max() / scale
    print(f'{model_name} {size}x{size} {naming} names: max rel err {err:.2e}')
    assert err < 1e-4
    converted[naming] = variables
  jax.tree.map(np.testing.assert_array_equal, converted['keras3'], converted['keras2'])


def test_converted_values_and_layouts(keras_files):
  f = keras_files['efficientnet_b0']
  variables = convert.keras_h5_to_variables(f['keras2'], 'efficientnet_b0')
  km = f['keras_224']
  dw = km.get_layer('block2a_dwconv').weights[0].numpy()  # (3, 3, 96, 1)
  np.testing.assert_array_equal(variables['params']['block2a_dwconv']['kernel'][:, :, 0, :],
                                dw[:, :, :, 0])
  bn = {w.path.rsplit('/', 1)[-1]: w.numpy() for w in km.get_layer('top_bn').weights}
  np.testing.assert_array_equal(variables['params']['top_bn']['scale'], bn['gamma'])
  np.testing.assert_array_equal(variables['batch_stats']['top_bn']['var'], bn['moving_variance'])
  norm = {w.path.rsplit('/', 1)[-1]: w.numpy() for w in km.get_layer('normalization').weights}
  for k in ('mean', 'variance', 'count'):
    np.testing.assert_array_equal(variables['batch_stats']['normalization'][k], norm[k])
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(variables))


def _edited_copy(src, dst, edit):
  shutil.copyfile(src, dst)
  with h5py.File(dst, 'r+') as f:
    edit(f)
  return str(dst)


def _drop_layer(f, layer):
  f.attrs['layer_names'] = [_s(n) for n in f.attrs['layer_names'] if _s(n) != layer]
  del f[layer]


def test_missing_layer_raises(b0_file, tmp_path):
  path = _edited_copy(b0_file, tmp_path / 'm.h5', lambda f: _drop_layer(f, 'block3a_se_reduce'))
  with pytest.raises(ValueError, match=r'lacks weights .*params/block3a_se_reduce/kernel \(1, 1, 144, 6\)'):
    convert.keras_h5_to_variables(path, 'efficientnet_b0')


def test_extra_layer_raises(b0_file, tmp_path):
  def add_layer(f):
    f.attrs['layer_names'] = [_s(n) for n in f.attrs['layer_names']] + ['mystery_conv']
    g = f.create_group('mystery_conv')
    g.attrs['weight_names'] = [b'mystery_conv/kernel']
    g.create_dataset('mystery_conv/kernel', data=np.zeros((1, 1, 3, 3), np.float32))
  path = _edited_copy(b0_file, tmp_path / 'e.h5', add_layer)
  with pytest.raises(ValueError, match="layer 'mystery_conv' has weights .*no such layer"):
    convert.keras_h5_to_variables(path, 'efficientnet_b0')


def test_extra_weight_raises(b0_file, tmp_path):
  def add_bias(f):
    g = f['stem_conv']
    g.attrs['weight_names'] = [_s(n) for n in g.attrs['weight_names']] + ['stem_conv/bias']
    g.create_dataset('stem_conv/bias', data=np.zeros((32,), np.float32))
  path = _edited_copy(b0_file, tmp_path / 'b.h5', add_bias)
  with pytest.raises(ValueError, match='stem_conv/bias .*params/stem_conv/bias does not exist'):
    convert.keras_h5_to_variables(path, 'efficientnet_b0')


def test_wrong_shape_raises(b0_file, tmp_path):
  def reshape(f):
    del f['top_conv/top_conv/kernel']
    f['top_conv'].create_dataset('top_conv/kernel', data=np.zeros((1, 1, 320, 1000), np.float32))
  path = _edited_copy(b0_file, tmp_path / 's.h5', reshape)
  with pytest.raises(ValueError, match=r'top_conv/kernel: file has \(1, 1, 320, 1000\), .*'
                                       r'needs \(1, 1, 320, 1280\)'):
    convert.keras_h5_to_variables(path, 'efficientnet_b0')


def test_b2_file_for_b0_raises(keras_files):
  with pytest.raises(ValueError, match="layer 'block1b_dwconv' has weights .*no such layer"):
    convert.keras_h5_to_variables(keras_files['efficientnet_b2']['keras3'], 'efficientnet_b0')


def test_renumbered_normalization_layer_is_accepted(b0_file, tmp_path):
  def rename(f):
    f.attrs['layer_names'] = ['normalization_7' if _s(n) == 'normalization' else _s(n)
                              for n in f.attrs['layer_names']]
    f.move('normalization', 'normalization_7')
  path = _edited_copy(b0_file, tmp_path / 'n.h5', rename)
  got = convert.keras_h5_to_variables(path, 'efficientnet_b0')['batch_stats']['normalization']
  want = convert.keras_h5_to_variables(b0_file, 'efficientnet_b0')['batch_stats']['normalization']
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_corrupt_files_raise_naming_the_path(b0_file, tmp_path):
  truncated = tmp_path / 'truncated.h5'
  truncated.write_bytes(open(b0_file, 'rb').read()[: os.path.getsize(b0_file) // 2])
  garbage = tmp_path / 'garbage.h5'
  garbage.write_bytes(b'<html>403 Forbidden</html>')
  for path in (truncated, garbage):
    with pytest.raises(convert.WeightsFileError, match=f'Cannot read Keras HDF5 weights file {path}'):
      convert.keras_h5_to_variables(str(path), 'efficientnet_b0')
  not_keras = tmp_path / 'plain.h5'
  with h5py.File(not_keras, 'w') as f:
    f['x'] = np.zeros(3)
  with pytest.raises(convert.WeightsFileError, match=f'{not_keras} is not a Keras HDF5 weights file'):
    convert.keras_h5_to_variables(str(not_keras), 'efficientnet_b0')


def test_cli_round_trip(keras_files, b0_file, tmp_path):
  out = tmp_path / 'ckpt'
  cmd = [sys.executable, '-m', 'tljax.convert', '--model=efficientnet_b0',
         f'--keras_h5={b0_file}', f'--out={out}']
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert f'to {out}' in run.stdout
  assert os.listdir(tmp_path) == ['ckpt']  # no temp dir left behind
  assert os.stat(out).st_mode & 0o777 == 0o777 & ~_umask()
  want = convert.keras_h5_to_variables(b0_file, 'efficientnet_b0')
  got = convert.load_converted(str(out), 'efficientnet_b0')
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert convert.converted_metadata(str(out))['source_md5'] == md5(b0_file)
  with pytest.raises(ValueError, match="holds weights for 'efficientnet_b0', not 'efficientnet_b2'"):
    convert.load_converted(str(out), 'efficientnet_b2')
  # In-process: an existing --out is kept unless --overwrite.
  argv = cmd[2:]
  with pytest.raises(SystemExit, match='exists; pass .*--overwrite'):
    convert.main(argv)
  assert convert.main(argv + ['--overwrite']) == str(out)
  jax.tree.map(np.testing.assert_array_equal, convert.load_converted(str(out)), want)
  with pytest.raises(SystemExit, match='--out'):
    convert.main(['convert', '--model=efficientnet_b0', f'--keras_h5={b0_file}'])
  with pytest.raises(SystemExit, match="tljax.convert: .*'block1b_dwconv' .*no such layer"):
    convert.main(['convert', '--model=efficientnet_b0', f'--out={tmp_path / "b2"}',
                  f'--keras_h5={keras_files["efficientnet_b2"]["keras3"]}'])
  assert sorted(os.listdir(tmp_path)) == ['ckpt']


# tljax.models.imagenet: downloading, md5 checks and the cache, all without a network.


def _no_network(calls):
  def urlopen(*args, **kwargs):
    calls.append(args[0])
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
  return urlopen


def _serve(data, calls):
  def urlopen(*args, **kwargs):
    calls.append(args[0])
    return io.BytesIO(data)
  return urlopen


def test_offline_error_names_url_md5_and_path(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(urllib.request, 'urlopen', _no_network(calls))
  with pytest.raises(imagenet.WeightsUnavailableError) as e:
    imagenet.imagenet_variables('efficientnet_b0', str(tmp_path))
  assert isinstance(e.value, RuntimeError)
  msg = str(e.value)
  assert 'https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5' in msg
  assert '50bc09e76180e00e4465e1a485ddc09d' in msg
  assert str(tmp_path / 'efficientnetb0_notop.h5') in msg
  assert 'name resolution' in msg
  assert len(calls) == 1  # one attempt, no retry loop
  assert os.listdir(tmp_path) == []


def test_download_with_wrong_md5_keeps_nothing(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(urllib.request, 'urlopen', _serve(b'not the weights', calls))
  with pytest.raises(imagenet.WeightsUnavailableError,
                     match=r"md5 is .*expected 111f8e2ac8aa800a7a99e3239f7bfb39.*"
                           + str(tmp_path / 'efficientnetb2_notop.h5')):
    imagenet.imagenet_variables('efficientnet_b2', str(tmp_path))
  assert len(calls) == 1 and os.listdir(tmp_path) == []


def test_download_convert_and_cache(b0_file, tmp_path, monkeypatch):
  monkeypatch.setitem(imagenet.FILES, 'efficientnet_b0', ('efficientnetb0_notop.h5', md5(b0_file)))
  calls = []
  monkeypatch.setattr(urllib.request, 'urlopen', _serve(open(b0_file, 'rb').read(), calls))
  want = convert.keras_h5_to_variables(b0_file, 'efficientnet_b0')
  got = imagenet.imagenet_variables('efficientnet_b0', str(tmp_path))
  assert calls == ['https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5']
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert sorted(os.listdir(tmp_path)) == ['efficientnet_b0_imagenet', 'efficientnetb0_notop.h5']
  # Second call: the converted checkpoint alone serves; no download, no conversion.
  os.remove(tmp_path / 'efficientnetb0_notop.h5')
  monkeypatch.setattr(urllib.request, 'urlopen', _no_network(calls))
  monkeypatch.setattr(convert, 'keras_h5_to_variables', lambda *a: pytest.fail('converted again'))
  jax.tree.map(np.testing.assert_array_equal,
               imagenet.imagenet_variables('efficientnet_b0', str(tmp_path)), want)
  assert len(calls) == 1


def test_file_put_by_hand_is_used_and_checked(b0_file, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(urllib.request, 'urlopen', _no_network(calls))
  by_hand = tmp_path / 'efficientnetb0_notop.h5'
  shutil.copyfile(b0_file, by_hand)
  with pytest.raises(imagenet.WeightsUnavailableError,
                     match=f'{by_hand} has md5 {md5(b0_file)}, expected 50bc09e7'):
    imagenet.imagenet_variables('efficientnet_b0', str(tmp_path))
  monkeypatch.setitem(imagenet.FILES, 'efficientnet_b0', ('efficientnetb0_notop.h5', md5(b0_file)))
  got = imagenet.imagenet_variables('efficientnet_b0', str(tmp_path))
  assert calls == []
  jax.tree.map(np.testing.assert_array_equal, got,
               convert.keras_h5_to_variables(b0_file, 'efficientnet_b0'))
