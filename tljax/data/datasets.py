"""Datasets: loading (TFDS, scikit-learn digits, image folders), class splits, preprocessing, batching."""

import dataclasses
import os
import queue
import socket
import threading

from absl import logging
import numpy as np
import psutil

from tljax.data import digits
from tljax.data import folders
from tljax.data import prepare
from tljax.runtime import errors

# TFDS datasets tljax knows: class count, how to fit images to the model's size
# ('pad': zero-pad smaller images, as the thesis padded MNIST 28 -> 32;
# 'resize': bilinear resize), and the hosts their downloads come from.
TFDS_DATASETS = {
    'cifar10': dict(num_classes=10, fit='resize', hosts=('www.cs.toronto.edu',)),
    'cifar100': dict(num_classes=100, fit='resize', hosts=('www.cs.toronto.edu',)),
    'mnist': dict(num_classes=10, fit='pad', hosts=('storage.googleapis.com',)),
    'svhn_cropped': dict(num_classes=10, fit='resize', hosts=('ufldl.stanford.edu',)),
}
# Other sources: scikit-learn's 8x8 digits (ships with the package), image folders.
FOLDER_DATASETS = {
    'image_folder': dict(num_classes=None, fit='resize'),
    'intel_scenes': dict(num_classes=6, fit='resize',
                         classes=('buildings', 'forest', 'glacier', 'mountain', 'sea', 'street')),
}
OTHER_DATASETS = {'digits': dict(num_classes=10, fit='resize'), **FOLDER_DATASETS}
SPLITS = ('train', 'test')
# Fraction of each digit class held out as the digits 'test' split (fixed seed 0).
DIGITS_TEST_FRACTION = 0.25
MOCK_EXAMPLES = 64


class DatasetUnavailableError(errors.UserError):
  """A dataset that is neither on disk nor downloadable now."""


def names():
  return tuple(sorted(TFDS_DATASETS)) + tuple(sorted(OTHER_DATASETS))


def num_classes(name, classes=()):
  """Class count of `name` after selecting `classes` (all when empty)."""
  _check_name(name)
  if classes:
    return len(classes)
  n = {**TFDS_DATASETS, **OTHER_DATASETS}[name]['num_classes']
  if n is None:
    raise ValueError(f'The class count of dataset {name!r} is only known from its folders.')
  return n


def _check_name(name):
  if name not in TFDS_DATASETS and name not in OTHER_DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; known datasets: {", ".join(names())}.')


@dataclasses.dataclass
class Arrays:
  """A whole split in memory: images (N, H, W, C) uint8 or float32 in [0, 1], labels (N,) int32."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  split: str

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class ModelInput:
  """What the model takes (image folders are prepared at exactly this) and where that is cached.

  memory_budget_bytes: a prepared split larger than this is trained from a memory map of
  its cache file; 0 = half the RAM available when the split loads.
  """
  image_size: int
  channels: int
  cache_dir: str = 'artifacts/cache'
  memory_budget_bytes: int = 0

  def budget(self):
    if self.memory_budget_bytes:
      return self.memory_budget_bytes
    return psutil.virtual_memory().available // 2


def is_folder(name):
  return name in FOLDER_DATASETS


def load(name, split, *, classes=(), data_dir=None, root=None, model_input=None, mock=False,
         mock_examples=MOCK_EXAMPLES, classes_field='classes'):
  """One split of a dataset, class-filtered, labels remapped to 0..len(classes)-1.

  classes: labels to keep (in this order); empty keeps all. At least two classes, each with
    an example in the split (check_classes; an image folder's splits are all checked before
    any is decoded), else ValueError; `classes_field` names the field in its message.
  data_dir: TFDS's data directory. root: an image folder's root (image-folder datasets),
    prepared at `model_input` (a ModelInput) and cached on disk.
  mock: for dry runs: TFDS datasets come from `tfds.testing.mock_data`, image folders give
    random images at the model's input for the folders' classes (listed, never decoded);
    `mock_examples` per split.
  """
  _check_name(name)
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; known splits: {SPLITS}.')
  if is_folder(name):
    return _load_folder(name, split, classes, root, model_input, mock, mock_examples,
                        classes_field)
  if name in TFDS_DATASETS:
    images, labels = _load_tfds(name, split, data_dir, mock, mock_examples)
    total = TFDS_DATASETS[name]['num_classes']
  else:
    images, labels = _load_digits(split)
    total = 10
  lut, total = _class_lut(name, classes, total)
  if lut is not None and mock:  # random labels: keep every mock example, folded onto the classes
    labels = labels % total
  elif lut is not None:
    keep = lut[labels] >= 0
    images, labels = images[keep], lut[labels[keep]]
  check_classes(labels, total, f'Dataset {name!r} split {split!r}', classes=classes,
                field=classes_field, require_all=not mock)  # mock labels are random
  return Arrays(images, labels.astype(np.int32), total, name, split)


def check_classes(labels, total, where, *, class_names=None, classes=(), field='classes',
                  require_all=True):
  """ValueError unless there are two classes or more and `labels` (one split's, remapped to
  0..total-1) holds every one: an accuracy that silently leaves a class out is not honest."""
  picked = list(classes) or list(range(total))
  named = lambda i: (f'{class_names[picked[i]]!r} (label {picked[i]})' if class_names
                     else f'label {picked[i]}')
  if total < 2:
    raise ValueError(f'{where}: only {total} class ({", ".join(map(named, range(total)))}); a '
                     'classifier needs two or more: '
                     + (f'select two or more with {field}.' if classes else 'add another class.'))
  missing = sorted(set(range(total)) - set(np.unique(labels).tolist())) if require_all else []
  if missing:
    others = tuple(c for i, c in enumerate(picked) if i not in missing)
    raise ValueError(f'{where} has no example of class{"es" * (len(missing) > 1)} '
                     f'{", ".join(map(named, missing))}: every split must hold every class, or '
                     f'its accuracy leaves {"them" if len(missing) > 1 else "it"} out. Add '
                     f'examples, or select the other classes: {field}={others}.')


def _class_lut(name, classes, total, class_names=None):
  """(label lookup table or None, class count) for keeping `classes` of `total` labels."""
  if not classes:
    return None, total
  bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < total]
  if bad or len(set(classes)) != len(classes):
    known = (' (' + ', '.join(f'{i}={n}' for i, n in enumerate(class_names)) + ')'
             if class_names else '')
    raise ValueError(f'Bad classes {tuple(classes)} for dataset {name!r}: must be distinct '
                     f'labels in 0..{total - 1}{known}.')
  lut = np.full(total, -1, np.int32)
  lut[list(classes)] = np.arange(len(classes), dtype=np.int32)
  return lut, len(classes)


def _load_digits(split):
  """The digits' `split` (digits.load, at DIGITS_TEST_FRACTION)."""
  return digits.load(split, DIGITS_TEST_FRACTION)


def _hosts_reachable(hosts, timeout=5.0):
  for host in hosts:
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
      return False
  return True


def _tfds():
  """tensorflow_datasets, imported on first use (with TensorFlow kept off the accelerators)."""
  prepare.tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _load_tfds(name, split, data_dir, mock, mock_examples=MOCK_EXAMPLES):
  tfds = _tfds()
  if mock:
    with tfds.testing.mock_data(num_examples=mock_examples):
      return _to_numpy(tfds.load(name, split=split, as_supervised=True))
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    where = builder.data_dir
    hosts = TFDS_DATASETS[name]['hosts']
    if not _hosts_reachable(hosts):
      raise DatasetUnavailableError(
          f'Dataset {name!r} is not in the TFDS data directory {where} and cannot be '
          f'downloaded now ({", ".join(hosts)} is unreachable). Connect to the internet and '
          f'run again (or `tfds build {name} --data_dir={os.path.dirname(os.path.dirname(where))}`), '
          f'or copy a prepared copy of the dataset to {where}; '
          '`--config.dry_run=True` checks a config without any data.')
    try:
      builder.download_and_prepare()
    except Exception as e:  # TFDS raises many types for network and disk failures
      raise DatasetUnavailableError(
          f'Downloading/preparing dataset {name!r} into {where} failed: {e}') from e
  return _to_numpy(builder.as_dataset(split=split, as_supervised=True))


def _to_numpy(ds):
  """A (image, label) tf.data split as two numpy arrays (label int32)."""
  xs, ys = [], []
  for x, y in _tfds().as_numpy(ds.batch(4096)):
    xs.append(x)
    ys.append(y)
  return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def _folder_listing(name, split, root):
  return folders.checked_listing(name, split, root, FOLDER_DATASETS[name].get('classes'))


def _load_folder(name, split, classes, root, model_input, mock, mock_examples, field):
  if model_input is None:
    raise ValueError(f'Dataset {name!r} is prepared at the model\'s input: pass model_input.')
  # Every split is listed and checked before this one is decoded: a class missing from the
  # test split stops the run before the train split's preparation (minutes on a large folder).
  for s in [s for s in SPLITS if s == split or folders.has_split(root, s)]:
    listed = _folder_listing(name, s, root)
    lut, total = _class_lut(name, classes, len(listed.class_names), listed.class_names)
    labeled = listed.labels if lut is None else lut[listed.labels]
    check_classes(labeled[labeled >= 0], total, f'Split {s!r} of dataset {name!r} '
                  f'({listed.split_dir})', class_names=listed.class_names, classes=classes,
                  field=field)
    if s == split:
      listing, keep, labels = listed, labeled >= 0, labeled[labeled >= 0]
  if mock:  # the folders' classes, random images: nothing decoded
    rng = np.random.default_rng(0)
    shape = (mock_examples, model_input.image_size, model_input.image_size, model_input.channels)
    return Arrays(rng.integers(0, 256, shape, np.uint8),
                  np.arange(mock_examples, dtype=np.int32) % total, total, name, split)
  if listing.ignored:
    logging.info('%s: ignored %d files that are not images by extension (%s)', listing.split_dir,
                 len(listing.ignored), ', '.join(sorted({os.path.basename(p) for p in
                                                         listing.ignored})[:5]))
  fit = prepare.Fit(model_input.image_size, model_input.channels, fit_of(name))
  images, _ = prepare.prepared_split(listing, keep, fit, model_input.cache_dir,
                                     model_input.budget(), tuple(classes))
  return Arrays(images, labels, total, name, split)


def identity(name, *, root=None, data_dir=None, mock=False):
  """What a dataset's numbers depend on, cheaply: for a folder, per split its file count and
  fingerprint (relative paths, sizes, modification times; nothing decoded)."""
  _check_name(name)
  if is_folder(name):
    out = dict(dataset=name, root=os.path.abspath(root or ''))
    for split in SPLITS:
      listing = _folder_listing(name, split, root)
      out[split] = dict(files=len(listing), fingerprint=listing.fingerprint())
    return out
  if mock:
    return dict(dataset=name, mock=True)
  if name == 'digits':
    import sklearn  # pylint: disable=g-import-not-at-top
    return dict(dataset=name, scikit_learn=sklearn.__version__)
  return dict(dataset=name, tfds_version=str(_tfds().builder_cls(name).VERSION))


def preprocess(images, *, image_size, channels, fit='resize', pixel_scale=1.0):
  """A batch (N, H, W, C) uint8 or [0, 1] float -> float32 (N, S, S, channels) x pixel_scale.

  Colour to grayscale with ITU-R 601 weights (tf.image.rgb_to_grayscale),
  grayscale to RGB by repeating; 'pad' zero-pads a smaller image to the size
  (the thesis's MNIST 28 -> 32), otherwise a bilinear resize.
  """
  x = images.astype(np.float32)
  if images.dtype == np.uint8:
    x = x / 255.0
  c = x.shape[-1]
  if channels == 1 and c == 3:
    x = x @ np.array([0.2989, 0.5870, 0.1140], np.float32)[:, None]
  elif channels == 3 and c == 1:
    x = np.repeat(x, 3, axis=-1)
  elif c != channels:
    raise ValueError(f'Cannot turn {c}-channel images into {channels} channels.')
  h, w = x.shape[1:3]
  if (h, w) != (image_size, image_size):
    if fit == 'pad' and h <= image_size and w <= image_size:
      top, left = (image_size - h) // 2, (image_size - w) // 2
      x = np.pad(x, ((0, 0), (top, image_size - h - top), (left, image_size - w - left), (0, 0)))
    else:
      x = prepare.tensorflow().image.resize(x, (image_size, image_size), method='bilinear').numpy()
  if pixel_scale != 1.0:
    x = x * np.float32(pixel_scale)
  return np.ascontiguousarray(x, np.float32)


def fit_of(name):
  return {**TFDS_DATASETS, **OTHER_DATASETS}[name]['fit']


def train_batches(arrays, batch_size, *, seed, epoch, start_step=0, prep):
  """Batches of one epoch, reshuffled per (seed, epoch); the last partial batch is dropped.

  Yields (images, labels) with images = prep(uint8 or float batch). The order
  depends only on (seed, epoch), so resuming at `start_step` is exact.
  """
  order = np.random.default_rng([seed, epoch]).permutation(len(arrays))
  steps = len(arrays) // batch_size
  for i in range(start_step, steps):
    idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
    yield prep(arrays.images[idx]), arrays.labels[idx]


def eval_batches(arrays, batch_size, *, prep):
  """All examples once, in order; the last batch padded, with a 0/1 mask of real examples."""
  n = len(arrays)
  for start in range(0, n, batch_size):
    images, labels = arrays.images[start:start + batch_size], arrays.labels[start:start + batch_size]
    k = len(labels)
    mask = np.ones(batch_size, np.float32)
    if k < batch_size:
      pad = batch_size - k
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
      mask[k:] = 0.0
    yield prep(images), labels, mask


def prefetch(iterator, size=2):
  """Runs `iterator` in a background thread, `size` items ahead; re-raises its errors.

  Leaving early (break, return, an exception, or close()) stops the worker thread and waits
  for it, so no thread or batch outlives the loop.
  """
  q = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item):
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def worker():
    try:
      for item in iterator:
        if not put(item):
          break
      else:
        put(done)
    except BaseException as e:  # pylint: disable=broad-except
      put(e)
    finally:
      getattr(iterator, 'close', lambda: None)()

  thread = threading.Thread(target=worker, daemon=True, name='tljax-prefetch')
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
      item = None
  finally:
    stop.set()
    while thread.is_alive():
      try:
        q.get(timeout=0.05)
      except queue.Empty:
        pass
    thread.join()
