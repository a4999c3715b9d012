"""Image folders prepared once at the model's input: tf.data decoding, a uint8 .npy cache on disk.

A split is decoded in parallel (tf.data), fitted to the model's size and channels, rounded
to uint8 and written straight into its cache file (`np.lib.format.open_memmap`), so peak
memory is the prepared split plus tf.data's few buffered images, never a float copy of the
split. The cache is keyed by the folder's fingerprint (paths, sizes, modification times),
the class selection and the fit; a second run with the same folder and model decodes nothing.
A prepared split larger than the memory budget stays a read-only memory map: training
reads its shuffled batches from disk.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import time

from absl import logging
import numpy as np
from PIL import Image

from tljax.runtime import report

# Bump when the decoding or fitting below changes: old caches are then not reused.
VERSION = 1
DONE = 'prepared.json'
_TF = []


def tensorflow():
  """TensorFlow, imported on first use (a run on arrays in memory never needs it) and kept off
  the accelerators JAX uses: it only feeds the input pipeline."""
  if not _TF:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      tf.config.set_visible_devices([], 'GPU')
    except (RuntimeError, ValueError):  # devices already initialized, or none to hide
      pass
    _TF.append(tf)
  return _TF[0]


@dataclasses.dataclass(frozen=True)
class Fit:
  """What the model takes: side, channels (1 = ITU-R 601 grayscale, 3 = RGB) and the fit rule
  ('resize': bilinear, antialiased when shrinking; 'pad': zero-pad a smaller image, centred)."""
  image_size: int
  channels: int
  rule: str = 'resize'


def _fit_image(x, fit):
  """One float32 (h, w, c) image in [0, 255] to (S, S, c)."""
  tf, s = tensorflow(), fit.image_size
  resize = lambda: tf.image.resize(x, (s, s), method='bilinear', antialias=True)
  if fit.rule != 'pad':
    return resize()
  h, w = tf.shape(x)[0], tf.shape(x)[1]
  pad = lambda: tf.image.pad_to_bounding_box(x, (s - h) // 2, (s - w) // 2, s, s)
  return tf.cond(tf.logical_and(h <= s, w <= s), pad, resize)


def _decode_fn(fit):
  tf = tensorflow()

  def decode(path, index):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8,
                               expand_animations=False)
    x = tf.cast(image, tf.float32)
    if fit.channels == 1:
      x = tf.image.rgb_to_grayscale(x)
    x = _fit_image(x, fit)
    x.set_shape((fit.image_size, fit.image_size, fit.channels))
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8), index
  return decode


def _why(path):
  """PIL's reason a file does not decode (for the error message)."""
  try:
    with Image.open(path) as image:
      image.load()
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
    return f'{type(e).__name__}: {e}'
  return 'TensorFlow cannot decode it'


def decode_into(paths, fit, out, batch=64):
  """Decodes `paths` into `out[i]` (uint8 (N, S, S, C)) in parallel; ValueError naming bad files."""
  tf = tensorflow()
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths), tf.range(len(paths))))
  options = tf.data.Options()
  options.deterministic = False  # each image goes to its own index, so order does not matter
  ds = ds.with_options(options).map(_decode_fn(fit), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ignore_errors(log_warning=False).batch(batch).prefetch(1)
  filled = np.zeros(len(paths), bool)
  for images, index in ds.as_numpy_iterator():
    out[index] = images
    filled[index] = True
  bad = np.flatnonzero(~filled)
  if len(bad):
    first = paths[bad[0]]
    more = f' and {len(bad) - 1} more: ' + ', '.join(paths[i] for i in bad[1:6]) if len(bad) > 1 else ''
    raise ValueError(f'Could not read or decode image file {first} ({_why(first)}){more}. '
                     'Remove or replace it (or rename it to a non-image extension to skip it).')


def cache_key(listing_fingerprint, fit, classes):
  blob = json.dumps(dict(fingerprint=listing_fingerprint, fit=dataclasses.asdict(fit),
                         classes=list(classes), version=VERSION), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write(directory, paths, fit, in_memory):
  """Decodes into directory/images.npy (through RAM when `in_memory`); returns the images."""
  shape = (len(paths), fit.image_size, fit.image_size, fit.channels)
  nbytes = int(np.prod(shape))
  os.makedirs(directory)
  report.require_free_disk(directory, nbytes, f'Preparing {len(paths)} images',
                           'pass --config.cache_dir=DIR on a larger disk.')
  file = os.path.join(directory, 'images.npy')
  if in_memory:
    images = np.empty(shape, np.uint8)
    decode_into(paths, fit, images)
    np.save(file, images)
  else:
    images = np.lib.format.open_memmap(file, 'w+', np.uint8, shape)
    decode_into(paths, fit, images)
    images.flush()
    del images
    images = np.load(file, mmap_mode='r')
  return images


def prepared_split(listing, keep, fit, cache_dir, budget_bytes, classes=()):
  """(images, labels, info) of `listing[keep]` at the model's input, from the cache if there.

  images: uint8 (N, S, S, C), in RAM when it fits `budget_bytes`, else a read-only memmap.
  """
  paths = [p for p, k in zip(listing.paths, keep) if k]
  fingerprint = listing.fingerprint()
  key = cache_key(fingerprint, fit, classes)
  # Named by content only: a moved or renamed copy of the folder reuses it.
  directory = os.path.abspath(os.path.join(cache_dir, 'prepared', f'{listing.split}_{key}'))
  nbytes = len(paths) * fit.image_size ** 2 * fit.channels
  in_memory = nbytes <= budget_bytes
  t0 = time.perf_counter()
  reused = os.path.exists(os.path.join(directory, DONE))
  if reused:
    images = np.load(os.path.join(directory, 'images.npy'), mmap_mode=None if in_memory else 'r')
  else:
    tmp = f'{directory}.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    logging.info('Preparing %d images of %s at %dx%dx%d (%.1f MiB uint8)', len(paths),
                 listing.split_dir, fit.image_size, fit.image_size, fit.channels, nbytes / 2**20)
    try:
      images = _write(tmp, paths, fit, in_memory)
      with open(os.path.join(tmp, DONE), 'w') as f:
        json.dump(dict(root=os.path.abspath(listing.root), split=listing.split, files=len(paths),
                       fingerprint=fingerprint, fit=dataclasses.asdict(fit),
                       classes=list(classes), version=VERSION), f)
      try:
        os.replace(tmp, directory)
      except OSError:  # another run prepared the same split meanwhile: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not in_memory:
          images = np.load(os.path.join(directory, 'images.npy'), mmap_mode='r')
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  seconds = time.perf_counter() - t0
  info = dict(prepared_cache=directory, reused=reused, bytes=nbytes, seconds=seconds,
              location='memory' if in_memory else 'memory map')
  logging.info('%s %s: %d images, %.1f MiB, %s (%.2f s)', 'Reused' if reused else 'Prepared',
               directory, len(paths), nbytes / 2**20, info['location'], seconds)
  return images, info
