"""scikit-learn's 8x8 digits at 32x32: upsampled once per process, split per class."""

import functools

import numpy as np

from tljax.data import resize


@functools.lru_cache(maxsize=1)
def _upsampled():
  """The 1797 digits upsampled (bilinear) to 32x32 in [0, 1], and their labels (resize.bilinear:
  tf.image.resize's bits, without TensorFlow)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  images = resize.bilinear(data.images.astype(np.float32)[..., None] / 16.0, 32, 32)
  return np.clip(images, 0.0, 1.0), data.target.astype(np.int32)


def load(split, test_fraction):
  """(images, labels) of `split` ('train' or 'test': `test_fraction` of each class, drawn with
  a fixed seed, so the split never depends on the experiment's seed); new arrays each call."""
  images, labels = _upsampled()
  rng = np.random.default_rng(0)
  test = np.zeros(len(labels), bool)
  for c in range(10):
    idx = np.flatnonzero(labels == c)
    test[rng.permutation(idx)[:int(round(len(idx) * test_fraction))]] = True
  keep = test if split == 'test' else ~test
  return images[keep], labels[keep]
