"""The validation split: examples of the target's train split held out by seed, never trained on."""

import dataclasses

import numpy as np


class Rows:
  """Rows `index` (sorted) of an image array, without copying it: a memory-mapped split stays on
  disk. Indexing by an int array or a slice reads just those rows, as numpy would."""

  def __init__(self, base, index):
    self.base, self.index = base, np.asarray(index, np.int64)
    self.shape = (len(self.index),) + tuple(base.shape[1:])
    self.dtype = base.dtype

  def __len__(self):
    return len(self.index)

  def __getitem__(self, key):
    rows = self.index[key]
    return self.base[rows] if np.ndim(rows) else self.base[int(rows)]

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self.base[self.index]
    return out if dtype is None else out.astype(dtype)


def held_out(labels, fraction, seed):
  """Sorted indices of the validation examples: `fraction` of each class (at least one of every
  class with two or more examples), chosen by `seed` alone (the same for every case)."""
  if not 0 <= fraction < 1:
    raise ValueError(f'validation fraction {fraction!r}: must be in [0, 1).')
  labels = np.asarray(labels)
  rng = np.random.default_rng([int(seed), 0x7A11])
  out = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = int(round(len(idx) * fraction))
    if fraction > 0 and len(idx) >= 2:
      k = min(max(k, 1), len(idx) - 1)
    out.append(rng.permutation(idx)[:k])
  return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def split(arrays, fraction, seed):
  """(train, validation) of `arrays` (datasets.Arrays): the validation examples `held_out` by
  `seed`, the train split without them. fraction=0 returns (arrays, None)."""
  if not fraction:
    return arrays, None
  val = held_out(arrays.labels, fraction, seed)
  if len(val) == 0:
    raise ValueError(f'config.validation_fraction={fraction!r} holds out no example of the '
                     f'{len(arrays)} in {arrays.name!r}; use a larger fraction.')
  keep = np.setdiff1d(np.arange(len(arrays)), val)
  return _rows(arrays, keep, arrays.split), _rows(arrays, val, 'validation')


def _rows(arrays, index, split_name):
  return dataclasses.replace(arrays, images=Rows(arrays.images, index),
                             labels=np.asarray(arrays.labels)[index], split=split_name)

