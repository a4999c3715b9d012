"""Keras's ImageNet weights (EfficientNet, MobileNetV2/V3, ResNet50): downloaded once, converted
once, cached."""

import hashlib
import http.client
import os
import urllib.error
import urllib.request

from tljax import convert
from tljax import models
from tljax.runtime import errors

BASE_URL = 'https://storage.googleapis.com/keras-applications/'
# keras.applications's BASE_WEIGHT_PATHs of the edge models (its mobilenet_v2.py,
# mobilenet_v3.py and resnet.py).
KERAS_APPLICATIONS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/'
# model name -> (file name, md5), as keras.applications downloads them (include_top=False).
FILES = {
    'efficientnet_b0': ('efficientnetb0_notop.h5', '50bc09e76180e00e4465e1a485ddc09d'),
    'efficientnet_b2': ('efficientnetb2_notop.h5', '111f8e2ac8aa800a7a99e3239f7bfb39'),
    'resnet50': ('resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5',
                 '4d473c1dd8becc155b73f8504c6f6626'),
}
# MobileNetV3's no-top files by Keras's model name (mobilenet_v3.py WEIGHTS_HASHES[...][1]).
MOBILENET_V3_MD5 = {
    'large_224_0.75_float': '40af19a13ebea4e2ee0c676887f69a2e',
    'large_224_1.0_float': '07fb09a5933dd0c8eaafa16978110389',
    'large_minimalistic_224_1.0_float': 'ec5221f64a2f6d1ef965a614bdae7973',
    'small_224_0.75_float': 'ebdb5cc8e0b497cd13a7c275d475c819',
    'small_224_1.0_float': 'd3e8ec802a04aa4fc771ee12a9a9b836',
    'small_minimalistic_224_1.0_float': 'cde8136e733e811080d9fcd8a252f7e4',
}


class WeightsUnavailableError(errors.UserError):
  """The weights file could not be fetched, or its md5 is wrong."""


def source(model_name: str, alpha=1.0, minimalistic=False, image_size=224):
  """(path under the URL root, md5 or None) of the include_top=False ImageNet weights Keras
  loads for the model and its fields; md5 None: Keras publishes none (MobileNetV2's files)."""
  problem = models.imagenet_problem(model_name, alpha, minimalistic, image_size)
  if problem:
    raise ValueError(problem)
  if model_name in FILES:
    return FILES[model_name]
  if model_name == 'mobilenet_v2':
    return (f'mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_'
            f'{image_size}_no_top.h5', None)
  name = (f'{model_name.rsplit("_", 1)[-1]}{"_minimalistic" if minimalistic else ""}_224_'
          f'{float(alpha)}_float')
  return f'mobilenet_v3/weights_mobilenet_v3_{name}_no_top_v2.h5', MOBILENET_V3_MD5[name]


def _source(model_name, fields):
  return source(model_name, **fields)


def url(model_name: str, **fields) -> str:
  path = _source(model_name, fields)[0]
  return (BASE_URL if model_name.startswith('efficientnet') else KERAS_APPLICATIONS_URL) + path


def file_name(model_name: str, **fields) -> str:
  return os.path.basename(_source(model_name, fields)[0])


def _by_hand(model_name, fields, path):
  md5 = _source(model_name, fields)[1]
  return (f'Download {url(model_name, **fields)} ('
          + (f'md5 {md5}' if md5 else 'Keras publishes no md5 for it') + f') by hand and put it '
          f'at {path} ; it will be checked and converted on the next run.')


def _download(model_name: str, fields: dict, path: str, timeout: float) -> None:
  """One attempt: stream to a temporary name, check the md5, rename."""
  src, want_md5 = url(model_name, **fields), _source(model_name, fields)[1]
  tmp = f'{path}.part-{os.getpid()}'
  md5 = hashlib.md5()
  try:
    with urllib.request.urlopen(src, timeout=timeout) as response, open(tmp, 'wb') as f:
      for chunk in iter(lambda: response.read(1 << 20), b''):
        md5.update(chunk)
        f.write(chunk)
  except (OSError, http.client.HTTPException) as e:  # URLError, socket timeouts, resets
    _remove(tmp)
    raise WeightsUnavailableError(f'Could not download {src} ({type(e).__name__}: {e}). '
                                  + _by_hand(model_name, fields, path)) from e
  if want_md5 and md5.hexdigest() != want_md5:
    _remove(tmp)
    raise WeightsUnavailableError(f'Downloaded {src} but its md5 is {md5.hexdigest()}, expected '
                                  f'{want_md5}; nothing was kept. '
                                  + _by_hand(model_name, fields, path))
  os.replace(tmp, path)


def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _variant(model_name, fields):
  """'' for a model without fields, else e.g. '_alpha0.35_128' (MobileNetV2's file depends on
  the input size) or '_alpha1.0_minimalistic'."""
  if model_name not in models.MODEL_FIELDS:
    return ''
  out = f'_alpha{float(fields.get("alpha", 1.0))}'
  if model_name == 'mobilenet_v2':
    out += f'_{fields.get("image_size", 224)}'
  return out + ('_minimalistic' if fields.get('minimalistic') else '')


def checkpoint_dir(model_name: str, cache_dir: str, **fields) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)),
                      f'{model_name}{_variant(model_name, fields)}_imagenet')


def config_fields(config) -> dict:
  """The keyword arguments of `imagenet_variables` and `ensure_converted` for a config: its
  model fields, and the input size where the weights file depends on it (MobileNetV2)."""
  out = models.model_fields(config.model, config)
  if config.model == 'mobilenet_v2':
    out['image_size'] = config.image_size
  return out


def imagenet_variables(model_name: str, cache_dir: str, timeout: float = 60.0, **fields) -> dict:
  """{'params', 'batch_stats'} of the base model with Keras's ImageNet weights, from the
  converted checkpoint in cache_dir (made first by `ensure_converted` if absent). fields: the
  model's fields (alpha, minimalistic) and, for MobileNetV2, image_size (`config_fields`)."""
  model_fields = {k: v for k, v in fields.items() if k != 'image_size'}
  return convert.load_converted(ensure_converted(model_name, cache_dir, timeout, **fields),
                                model_name, **model_fields)


def ensure_converted(model_name: str, cache_dir: str, timeout: float = 60.0, **fields) -> str:
  """The converted checkpoint's directory in cache_dir. If absent: converts the .h5 in
  cache_dir (downloading it first, once, if it is absent, and checking its md5 where Keras has
  one); offline, a WeightsUnavailableError naming the URL and the path (a sweep asks before
  compiling)."""
  _, want_md5 = _source(model_name, fields)
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  ckpt = checkpoint_dir(model_name, cache_dir, **fields)
  if os.path.isdir(ckpt):
    return ckpt
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, file_name(model_name, **fields))
  if not os.path.exists(path):
    _download(model_name, fields, path, timeout)
  have = convert.file_md5(path)
  if want_md5 and have != want_md5:
    raise WeightsUnavailableError(f'{path} has md5 {have}, expected {want_md5} for '
                                  f'{url(model_name, **fields)}; delete or replace it. '
                                  + _by_hand(model_name, fields, path))
  model_fields = {k: v for k, v in fields.items() if k != 'image_size'}
  variables = convert.keras_h5_to_variables(path, model_name, **model_fields)
  meta = {'model': model_name, 'source': url(model_name, **fields), 'source_md5': have,
          'fields': model_fields}
  try:
    convert.save_converted(variables, ckpt, meta)
  except FileExistsError:
    pass  # another process converted it meanwhile
  return ckpt
