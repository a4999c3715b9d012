"""Image folders prepared once at the model's input: tf.data decoding, a uint8 .npy cache on disk.

A split is decoded in parallel (tf.data), fitted to the model's size and channels, rounded
to uint8 and written straight into its cache file (`np.lib.format.open_memmap`), so peak
memory is the prepared split plus tf.data's few buffered images, never a float copy of the
split. The cache is keyed by the folder's fingerprint (paths, sizes, modification times),
the class selection and the fit; a second run with the same folder and model decodes nothing.
A prepared split larger than the memory budget stays a read-only memory map: training
reads its shuffled batches from disk.

Decoding checks the interrupt flag (tljax.runtime.interrupt) after every batch of images: SIGINT
stops it within a second. What was decoded stays in `<cache>.partial` (the memory-mapped file and a
progress marker: the count of leading images written), under the same key, so a rerun on the
unchanged folder decodes only the rest; a changed folder has another key, and its stale
partial preparation is removed. One process prepares a split at a time (a lock file beside it):
another waits, then reuses it.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time

from absl import logging
import numpy as np
from PIL import Image

from tljax.runtime import cli
from tljax.runtime import interrupt
from tljax.runtime import report

# Bump when the decoding or fitting below changes: old caches are then not reused.
VERSION = 1
DONE = 'prepared.json'
PROGRESS = 'progress.json'  # in a partial preparation: how many leading images are written
PROGRESS_EVERY = 1024  # images decoded between two progress markers
_TF = []


def tensorflow():
  """TensorFlow, imported on first use (a run on arrays in memory never needs it) and kept off
  the accelerators JAX uses: it only feeds the input pipeline."""
  if not _TF:
    cli.quiet_tensorflow()  # before TensorFlow loads: no C++ log lines on the console
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


def _prefix(filled):
  """How many leading entries of `filled` are True."""
  return len(filled) if filled.all() else int(np.argmin(filled))


def decode_into(paths, fit, out, batch=64, start=0, progress=None):
  """Decodes `paths[start:]` into `out[i]` (uint8 (N, S, S, C)) in parallel; ValueError naming
  bad files. Checks the interrupt flag after each batch: at a signal (or KeyboardInterrupt)
  it calls `progress(n)` with the count of leading images written, then raises; it calls it
  every PROGRESS_EVERY images too."""
  filled = np.zeros(len(paths), bool)
  filled[:start] = True
  if start < len(paths):
    try:
      _decode(paths, fit, out, batch, start, progress, filled)
    except (interrupt.Interrupted, KeyboardInterrupt):
      if progress:
        progress(_prefix(filled))
      raise
  bad = np.flatnonzero(~filled)
  if len(bad):
    first = paths[bad[0]]
    more = f' and {len(bad) - 1} more: ' + ', '.join(paths[i] for i in bad[1:6]) if len(bad) > 1 else ''
    raise ValueError(f'Could not read or decode image file {first} ({_why(first)}){more}. '
                     'Remove or replace it (or rename it to a non-image extension to skip it).')


def _decode(paths, fit, out, batch, start, progress, filled):
  tf = tensorflow()
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths[start:]),
                                           tf.range(start, len(paths))))
  options = tf.data.Options()
  options.deterministic = False  # each image goes to its own index, so order does not matter
  ds = ds.with_options(options).map(_decode_fn(fit), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ignore_errors(log_warning=False).batch(batch).prefetch(1)
  since = 0
  for images, index in ds.as_numpy_iterator():
    out[index] = images
    filled[index] = True
    since += len(index)
    if progress and since >= PROGRESS_EVERY:
      progress(_prefix(filled))
      since = 0
    interrupt.check('while decoding images')


def cache_key(listing_fingerprint, fit, classes):
  blob = json.dumps(dict(fingerprint=listing_fingerprint, fit=dataclasses.asdict(fit),
                         classes=list(classes), version=VERSION), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path, what, wait=True):
  """Holds the lock file `path` (flock; the OS releases it if the process dies) and yields True.
  Held by another process: waits for it, checking the interrupt flag (or yields False at once
  when not `wait`). The file is removed on release."""
  waited = False
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      if not wait:
        yield False
        return
      if not waited:
        logging.info('Waiting for another process to prepare %s', what)
        waited = True
      interrupt.check(f'while waiting for another process to prepare {what}')
      time.sleep(0.2)
      continue
    try:
      if os.fstat(fd).st_ino == os.stat(path).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)  # the holder removed this file as we locked it: lock the new one
  try:
    yield True
  finally:
    os.remove(path)  # before unlocking: a waiter then finds a new file (another inode)
    os.close(fd)


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path, obj):
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f)
  os.replace(path + '.tmp', path)


def _drop_stale(directory, meta):
  """Removes partial preparations of the same folder split, fit and classes but other files
  (the folder changed since): they can never be reused. Those in use (locked) stay."""
  parent = os.path.dirname(directory)
  same = lambda p: p and all(p.get(k) == meta[k] for k in ('root', 'split', 'fit', 'classes'))
  for name in os.listdir(parent):
    other = os.path.join(parent, name)
    if (name.endswith('.partial') and other != directory + '.partial'
        and same(_read_json(os.path.join(other, PROGRESS)))):
      with _locked(other[:-len('.partial')] + '.lock', other, wait=False) as held:
        if held:
          logging.info('Removing %s: a partial preparation of files changed since', other)
          shutil.rmtree(other, ignore_errors=True)


def _resume_point(partial, meta, shape):
  """The count of leading images a partial preparation of the same files wrote, or None (a
  moved copy of the folder resumes it: its files have the same fingerprint)."""
  marker = _read_json(os.path.join(partial, PROGRESS))
  if not marker or any(marker.get(k) != v for k, v in meta.items() if k != 'root'):
    return None
  try:
    same_shape = np.load(os.path.join(partial, 'images.npy'), mmap_mode='r').shape == shape
  except (OSError, ValueError):
    return None
  return int(marker['done']) if same_shape else None


def _start(partial, directory, meta, shape):
  """(images memmap, first image to decode) of `partial`: resumed when it matches `meta`."""
  file = os.path.join(partial, 'images.npy')
  start = _resume_point(partial, meta, shape)
  if start is not None:
    logging.info('Resuming the preparation in %s at image %d of %d', partial, start, shape[0])
    return np.load(file, mmap_mode='r+'), start
  _drop_stale(directory, meta)
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  report.require_free_disk(partial, int(np.prod(shape)), f'Preparing {shape[0]} images',
                           'pass --config.cache_dir=DIR on a larger disk.')
  return np.lib.format.open_memmap(file, 'w+', np.uint8, shape), 0


def _prepare(directory, paths, fit, meta, what):
  """Decodes `paths` into `directory`.partial/images.npy (resuming what a stopped run wrote
  there), then renames it to `directory`. Stopped by a signal, it keeps the partial
  preparation and raises interrupt.Interrupted; on an error it removes it."""
  partial = directory + '.partial'
  tensorflow()  # seconds on a busy machine: a signal meanwhile stops before anything is written
  interrupt.check(f'before decoding {what}')
  images, start = _start(partial, directory, meta,
                         (len(paths), fit.image_size, fit.image_size, fit.channels))

  def progress(done):
    images.flush()  # the images on disk before the marker that counts them
    _write_json(os.path.join(partial, PROGRESS), dict(meta, done=done))
  progress(start)
  try:
    decode_into(paths, fit, images, start=start, progress=progress)
  except interrupt.Interrupted as e:
    raise interrupt.Interrupted(e.signum, f'{e.detail} of {what}; those decoded are kept in '
                                f'{partial}: a rerun decodes only the rest') from None
  except KeyboardInterrupt:
    raise
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  images.flush()
  del images
  os.remove(os.path.join(partial, PROGRESS))
  _write_json(os.path.join(partial, DONE), meta)
  try:
    os.replace(partial, directory)
  except OSError:  # another process prepared the same split meanwhile (unlocked disk): keep theirs
    shutil.rmtree(partial, ignore_errors=True)


def prepared_split(listing, keep, fit, cache_dir, budget_bytes, classes=()):
  """(images, info) of `listing[keep]` at the model's input, from the cache if there.

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
  if not reused:
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with _locked(directory + '.lock', listing.split_dir):
      reused = os.path.exists(os.path.join(directory, DONE))  # by another process meanwhile
      if not reused:
        logging.info('Preparing %d images of %s at %dx%dx%d (%.1f MiB uint8)', len(paths),
                     listing.split_dir, fit.image_size, fit.image_size, fit.channels,
                     nbytes / 2**20)
        meta = dict(root=os.path.abspath(listing.root), split=listing.split, files=len(paths),
                    fingerprint=fingerprint, fit=dataclasses.asdict(fit),
                    classes=list(classes), version=VERSION)
        _prepare(directory, paths, fit, meta, listing.split_dir)
  images = np.load(os.path.join(directory, 'images.npy'), mmap_mode=None if in_memory else 'r')
  seconds = time.perf_counter() - t0
  info = dict(prepared_cache=directory, reused=reused, bytes=nbytes, seconds=seconds,
              location='memory' if in_memory else 'memory map')
  logging.info('%s %s: %d images, %.1f MiB, %s (%.2f s)', 'Reused' if reused else 'Prepared',
               directory, len(paths), nbytes / 2**20, info['location'], seconds)
  return images, info
