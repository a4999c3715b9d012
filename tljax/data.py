"""Datasets: loading (TFDS, scikit-learn digits, image folders), class splits, preprocessing, batching."""

import dataclasses
import os
import queue
import socket
import threading

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# TensorFlow only feeds the input pipeline; keep it off the accelerators JAX uses.
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):
  pass

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
OTHER_DATASETS = {
    'digits': dict(num_classes=10, fit='resize'),
    'image_folder': dict(num_classes=None, fit='resize'),
    'intel_scenes': dict(num_classes=6, fit='resize',
                         classes=('buildings', 'forest', 'glacier', 'mountain', 'sea', 'street')),
}
SPLITS = ('train', 'test')
# Fraction of each digit class held out as the digits 'test' split (fixed seed 0).
DIGITS_TEST_FRACTION = 0.25
MOCK_EXAMPLES = 64


class DatasetUnavailableError(RuntimeError):
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


def load(name, split, *, classes=(), data_dir=None, mock=False):
  """One split of a dataset, class-filtered, labels remapped to 0..len(classes)-1.

  classes: labels to keep (in this order); empty keeps all.
  mock: for dry runs: TFDS datasets come from `tfds.testing.mock_data`, image
    folders from random images; nothing is read from or written to disk.
  """
  _check_name(name)
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; known splits: {SPLITS}.')
  if name in TFDS_DATASETS:
    images, labels = _load_tfds(name, split, data_dir, mock)
    total = TFDS_DATASETS[name]['num_classes']
  elif name == 'digits':
    images, labels = _load_digits(split)
    total = 10
  else:
    images, labels, total = _load_folder(name, split, data_dir, mock)
  if classes:
    bad = [c for c in classes if not 0 <= c < total]
    if bad or len(set(classes)) != len(classes):
      raise ValueError(f'Bad classes {tuple(classes)} for dataset {name!r}: must be distinct '
                       f'labels in 0..{total - 1}.')
    lut = np.full(total, -1, np.int32)
    lut[list(classes)] = np.arange(len(classes), dtype=np.int32)
    keep = lut[labels] >= 0
    images, labels = images[keep], lut[labels[keep]]
    total = len(classes)
  if len(labels) == 0:
    raise ValueError(f'Dataset {name!r} split {split!r} with classes {tuple(classes)} is empty.')
  return Arrays(images, labels.astype(np.int32), total, name, split)


def _load_digits(split):
  """scikit-learn's 1797 8x8 digits, upsampled (bilinear) to 32x32, in [0, 1].

  Split per class into train/test with a fixed seed, so the split never
  depends on the experiment's seed.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = digits.images.astype(np.float32)[..., None] / 16.0
  images = tf.image.resize(images, (32, 32), method='bilinear').numpy()
  images = np.clip(images, 0.0, 1.0)
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(0)
  test = np.zeros(len(labels), bool)
  for c in range(10):
    idx = np.flatnonzero(labels == c)
    test[rng.permutation(idx)[:int(round(len(idx) * DIGITS_TEST_FRACTION))]] = True
  keep = test if split == 'test' else ~test
  return images[keep], labels[keep]


def _hosts_reachable(hosts, timeout=5.0):
  for host in hosts:
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
      return False
  return True


def _load_tfds(name, split, data_dir, mock):
  if mock:
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
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
  for x, y in tfds.as_numpy(ds.batch(4096)):
    xs.append(x)
    ys.append(y)
  return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def _load_folder(name, split, data_dir, mock):
  from tljax import folder_data  # pylint: disable=g-import-not-at-top
  expected = OTHER_DATASETS[name].get('classes')
  if mock:
    n = expected and len(expected)
    if not n:
      raise ValueError(f'A dry run of {name!r} needs its folders to know the classes.')
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (MOCK_EXAMPLES, 150, 150, 3), np.uint8),
            np.arange(MOCK_EXAMPLES, dtype=np.int32) % n, n)
  if not data_dir:
    raise ValueError(f'Dataset {name!r} needs --config.data_dir=/path/to/images '
                     '(with train/ and test/ folders of one folder per class).')
  if not os.path.isdir(data_dir):
    raise ValueError(f'data_dir {data_dir!r} of dataset {name!r} is not a directory.')
  class_names = folder_data.class_names(data_dir)
  if expected and tuple(c.lower() for c in class_names) != expected:
    raise ValueError(f'{data_dir} holds classes {class_names}; dataset {name!r} expects '
                     f'{list(expected)}.')
  folder_data.verify_images(data_dir, split)
  ds, n, class_names = folder_data.load_split(data_dir, split, 150 if expected else 224, 3)
  x, y = _to_numpy(ds)
  return np.round(x * 255).astype(np.uint8), y, len(class_names)


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
      x = tf.image.resize(x, (image_size, image_size), method='bilinear').numpy()
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
  """Runs `iterator` in a background thread, `size` items ahead; re-raises its errors."""
  q = queue.Queue(maxsize=size)
  done = object()

  def worker():
    try:
      for item in iterator:
        q.put(item)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
      return
    q.put(done)

  threading.Thread(target=worker, daemon=True).start()
  while True:
    item = q.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
