"""The validation split: held out of the train split by seed, per class, never trained on."""

import numpy as np
import pytest

from tljax.data import datasets
from tljax.data import validation


def _arrays(n=103, classes=3):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (n, 4, 4, 1), dtype=np.uint8)
  return datasets.Arrays(images, np.arange(n, dtype=np.int32) % classes, classes, 'toy', 'train')


def test_held_out_per_class_by_seed():
  a = _arrays()
  v0 = validation.held_out(a.labels, 0.2, seed=0)
  assert np.array_equal(v0, validation.held_out(a.labels, 0.2, seed=0))
  assert not np.array_equal(v0, validation.held_out(a.labels, 0.2, seed=1))
  counts = np.bincount(a.labels[v0], minlength=3)
  expected = [round(np.sum(a.labels == c) * 0.2) for c in range(3)]
  assert counts.tolist() == expected


def test_split_is_disjoint_and_reads_the_same_rows():
  a = _arrays()
  train, val = validation.split(a, 0.2, seed=3)
  assert len(train) + len(val) == len(a)
  rows_t, rows_v = train.images.index, val.images.index
  assert not set(rows_t.tolist()) & set(rows_v.tolist())
  np.testing.assert_array_equal(train.images[np.array([0, 5])], a.images[rows_t[[0, 5]]])
  np.testing.assert_array_equal(val.images[1:4], a.images[rows_v[1:4]])
  np.testing.assert_array_equal(np.asarray(val.images), a.images[rows_v])
  np.testing.assert_array_equal(train.labels, a.labels[rows_t])
  batches = list(datasets.train_batches(train, 10, seed=0, epoch=0, prep=lambda x: x))
  seen = np.concatenate([b[0] for b in batches]).reshape(len(batches) * 10, -1)
  held = a.images[rows_v].reshape(len(rows_v), -1)
  assert not any((seen == h).all(1).any() for h in held)


def test_no_fraction_no_split_and_bad_fraction_named():
  a = _arrays()
  assert validation.split(a, 0.0, seed=0) == (a, None)
  with pytest.raises(ValueError, match='validation fraction 1.5'):
    validation.held_out(a.labels, 1.5, 0)


def test_a_sweep_trains_on_the_train_split_less_validation(tiny_config, tmp_path):
  from tljax.sweep import runner  # pylint: disable=g-import-not-at-top
  c = tiny_config
  c.cases = ('last:1',)
  c.validation_fraction = 0.25
  summary = runner.train_and_evaluate(c, str(tmp_path / 'w'))
  sw = runner.Sweep(c, str(tmp_path / 'w2'))
  full = len(sw.target)
  assert summary['validation_examples'] == len(validation.held_out(sw.target.labels, 0.25, 0))
  assert summary['train_examples'] == full - summary['validation_examples']
  assert 0.2 * full < summary['validation_examples'] < 0.3 * full
