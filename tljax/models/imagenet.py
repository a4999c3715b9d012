"""Keras's ImageNet weights for the EfficientNets: downloaded once, converted once, cached."""

import hashlib
import http.client
import os
import urllib.error
import urllib.request

from tljax import convert
from tljax.runtime import errors

BASE_URL = 'https://storage.googleapis.com/keras-applications/'
# model name -> (file name, md5), as keras.applications downloads them (include_top=False).
FILES = {
    'efficientnet_b0': ('efficientnetb0_notop.h5', '50bc09e76180e00e4465e1a485ddc09d'),
    'efficientnet_b2': ('efficientnetb2_notop.h5', '111f8e2ac8aa800a7a99e3239f7bfb39'),
}


class WeightsUnavailableError(errors.UserError):
  """The weights file could not be fetched, or its md5 is wrong."""


def url(model_name: str) -> str:
  return BASE_URL + _entry(model_name)[0]


def _entry(model_name):
  if model_name not in FILES:
    raise ValueError(f'No ImageNet weights for {model_name!r}; known: {", ".join(sorted(FILES))}.')
  return FILES[model_name]


def _by_hand(model_name, path):
  return (f'Download {url(model_name)} (md5 {_entry(model_name)[1]}) by hand and put it at '
          f'{path} ; it will be checked and converted on the next run.')


def _download(model_name: str, path: str, timeout: float) -> None:
  """One attempt: stream to a temporary name, check the md5, rename."""
  src, (_, want_md5) = url(model_name), _entry(model_name)
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
                                  + _by_hand(model_name, path)) from e
  if md5.hexdigest() != want_md5:
    _remove(tmp)
    raise WeightsUnavailableError(f'Downloaded {src} but its md5 is {md5.hexdigest()}, expected '
                                  f'{want_md5}; nothing was kept. ' + _by_hand(model_name, path))
  os.replace(tmp, path)


def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def checkpoint_dir(model_name: str, cache_dir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), f'{model_name}_imagenet')


def imagenet_variables(model_name: str, cache_dir: str, timeout: float = 60.0) -> dict:
  """{'params', 'batch_stats'} of the base model with Keras's ImageNet weights, from the
  converted checkpoint in cache_dir (made first by `ensure_converted` if absent)."""
  return convert.load_converted(ensure_converted(model_name, cache_dir, timeout), model_name)


def ensure_converted(model_name: str, cache_dir: str, timeout: float = 60.0) -> str:
  """The converted checkpoint's directory in cache_dir. If absent: converts the .h5 in
  cache_dir (downloading it first, once, if it is absent, and checking its md5); offline, a
  WeightsUnavailableError naming the URL and the path (a sweep asks before compiling)."""
  name, want_md5 = _entry(model_name)
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  ckpt = checkpoint_dir(model_name, cache_dir)
  if os.path.isdir(ckpt):
    return ckpt
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, name)
  if not os.path.exists(path):
    _download(model_name, path, timeout)
  else:
    have = convert.file_md5(path)
    if have != want_md5:
      raise WeightsUnavailableError(f'{path} has md5 {have}, expected {want_md5} for '
                                    f'{url(model_name)}; delete or replace it. '
                                    + _by_hand(model_name, path))
  variables = convert.keras_h5_to_variables(path, model_name)
  meta = {'model': model_name, 'source': url(model_name), 'source_md5': want_md5}
  try:
    convert.save_converted(variables, ckpt, meta)
  except FileExistsError:
    pass  # another process converted it meanwhile
  return ckpt
