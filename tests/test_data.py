"""Datasets: the digits split, class selection, preprocessing, mock TFDS, offline errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tljax.data import datasets
from tljax.data import resize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_digits_split_by_class_like_yosinski():
  src = datasets.load('digits', 'train', classes=(0, 1, 2, 3, 4))
  tgt = datasets.load('digits', 'train', classes=(5, 6, 7, 8, 9))
  tgt_test = datasets.load('digits', 'test', classes=(5, 6, 7, 8, 9))
  assert src.images.shape[1:] == (32, 32, 1) and src.images.dtype == np.float32
  assert 0.0 <= src.images.min() and src.images.max() <= 1.0
  assert set(src.labels) == set(tgt.labels) == set(range(5))
  assert src.num_classes == tgt.num_classes == 5
  # 1797 digits in all, a quarter of each class held out, no example in both splits.
  all_train = datasets.load('digits', 'train')
  all_test = datasets.load('digits', 'test')
  assert len(all_train) + len(all_test) == 1797
  assert abs(len(all_test) - 1797 * datasets.DIGITS_TEST_FRACTION) < 10
  assert len(src) + len(tgt) == len(all_train)
  assert len(tgt_test) > 200
  train_set = {a.tobytes() for a in all_train.images}
  assert not any(a.tobytes() in train_set for a in all_test.images)


@pytest.mark.parametrize('shape, size', [((8, 8), (32, 32)), ((32, 32), (16, 16)),
                                         ((65, 40), (32, 77)), ((7, 13), (5, 3)), ((1, 1), (4, 4))])
def test_bilinear_resize_has_tensorflows_bits(shape, size):
  from tljax.data import prepare  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).uniform(0, 255, (3, *shape, 2)).astype(np.float32)
  ours = resize.bilinear(x, *size)
  theirs = prepare.tensorflow().image.resize(x, size, method='bilinear').numpy()
  assert ours.dtype == np.float32 and ours.tobytes() == theirs.tobytes()


def test_the_digits_are_tensorflows_upsampling_and_load_without_it():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from tljax.data import prepare  # pylint: disable=g-import-not-at-top
  raw = load_digits().images.astype(np.float32)[..., None] / 16.0
  theirs = np.clip(prepare.tensorflow().image.resize(raw, (32, 32), method='bilinear').numpy(),
                   0.0, 1.0)
  load = datasets._load_digits  # pylint: disable=protected-access
  train, test = load('train'), load('test')
  ours = {a.tobytes() for a in np.concatenate([train[0], test[0]])}
  assert ours == {a.tobytes() for a in theirs}
  code = ("import sys; from tljax.data import datasets; datasets.load('digits', 'train'); "
          "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]


def test_class_selection_remaps_in_the_given_order():
  full = datasets.load('digits', 'test')
  sel = datasets.load('digits', 'test', classes=(7, 3))
  assert np.array_equal(sel.labels == 0, full.labels[np.isin(full.labels, (7, 3))] == 7)
  with pytest.raises(ValueError, match=r'Bad classes \(3, 10\) for dataset .digits.'):
    datasets.load('digits', 'test', classes=(3, 10))


def test_preprocess_grayscale_pad_resize_scale():
  rgb = np.zeros((2, 28, 28, 3), np.uint8)
  rgb[..., 0] = 255
  out = datasets.preprocess(rgb, image_size=32, channels=1, fit='pad')
  assert out.shape == (2, 32, 32, 1)
  assert out[0, 2, 2, 0] == pytest.approx(0.2989, abs=1e-6)  # R weight of ITU-R 601
  assert out[0, 0, 0, 0] == 0.0 and out[0, 31, 31, 0] == 0.0  # zero padding 28 -> 32
  up = datasets.preprocess(rgb, image_size=56, channels=3, fit='resize', pixel_scale=255.0)
  assert up.shape == (2, 56, 56, 3)
  np.testing.assert_allclose(up[..., 0], 255.0)
  gray = np.full((1, 8, 8, 1), 0.5, np.float32)
  np.testing.assert_allclose(datasets.preprocess(gray, image_size=8, channels=3), 0.5)


def test_batches_are_deterministic_and_cover_the_epoch():
  arrays = datasets.load('digits', 'train', classes=(0, 1))
  prep = lambda x: x
  a = [y for _, y in datasets.train_batches(arrays, 16, seed=3, epoch=0, prep=prep)]
  b = [y for _, y in datasets.train_batches(arrays, 16, seed=3, epoch=0, prep=prep)]
  c = [y for _, y in datasets.train_batches(arrays, 16, seed=3, epoch=1, prep=prep)]
  assert len(a) == len(arrays) // 16
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  resumed = [y for _, y in datasets.train_batches(arrays, 16, seed=3, epoch=0, start_step=5, prep=prep)]
  assert all(np.array_equal(x, y) for x, y in zip(a[5:], resumed))
  evals = list(datasets.eval_batches(arrays, 100, prep=prep))
  assert sum(m.sum() for _, _, m in evals) == len(arrays)
  assert all(x.shape[0] == 100 for x, _, _ in evals)


@pytest.mark.parametrize('name, shape', [('cifar10', (32, 32, 3)), ('mnist', (28, 28, 1)),
                                         ('svhn_cropped', (32, 32, 3)), ('cifar100', (32, 32, 3))])
def test_mock_tfds(name, shape):
  arrays = datasets.load(name, 'train', mock=True)
  assert arrays.images.shape == (datasets.MOCK_EXAMPLES,) + shape
  assert arrays.num_classes == datasets.TFDS_DATASETS[name]['num_classes']


def test_offline_missing_dataset_fails_at_once_naming_it(tmp_path, monkeypatch):
  def refuse(*a, **k):
    raise OSError('network is unreachable')
  monkeypatch.setattr(datasets.socket, 'create_connection', refuse)
  with pytest.raises(datasets.DatasetUnavailableError) as e:
    datasets.load('mnist', 'train', data_dir=str(tmp_path))
  msg = str(e.value)
  assert "'mnist'" in msg and str(tmp_path) in msg and 'storage.googleapis.com' in msg


def test_unknown_dataset():
  with pytest.raises(ValueError, match="Unknown dataset 'imagenet21k'; known datasets: cifar10"):
    datasets.load('imagenet21k', 'train')


def test_image_folder_dataset(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (('train', 3), ('test', 2)):
    for cls in ('cats', 'dogs'):
      d = tmp_path / split / cls
      d.mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(d / f'{i}.png')
  model_input = datasets.ModelInput(224, 3, str(tmp_path / 'cache'))
  arrays = datasets.load('image_folder', 'train', root=str(tmp_path), model_input=model_input)
  assert arrays.images.shape == (6, 224, 224, 3) and arrays.images.dtype == np.uint8
  assert list(arrays.labels) == [0, 0, 0, 1, 1, 1] and arrays.num_classes == 2
  with pytest.raises(ValueError, match='needs the folder root: --config.source_data_dir'):
    datasets.load('image_folder', 'train', model_input=model_input)
  with pytest.raises(ValueError, match="expects \\['buildings'"):
    datasets.load('intel_scenes', 'train', root=str(tmp_path), model_input=model_input)


def test_every_split_must_hold_every_selected_class_and_two_at_least(monkeypatch):
  with pytest.raises(ValueError, match=r"'digits' split 'train': only 1 class \(label 3\); a "
                     'classifier needs two or more: select two or more with classes'):
    datasets.load('digits', 'train', classes=(3,))
  real = datasets._load_digits  # pylint: disable=protected-access

  def no_test_sevens(split):
    images, labels = real(split)
    keep = (labels != 7) | (split == 'train')
    return images[keep], labels[keep]

  monkeypatch.setattr(datasets, '_load_digits', no_test_sevens)
  assert datasets.load('digits', 'test', classes=(3, 5)).num_classes == 2
  with pytest.raises(ValueError, match=r"'digits' split 'test' has no example of class label 7: "
                     r'every split .* select the other classes: classes=\(3, 5\)\.'):
    datasets.load('digits', 'test', classes=(7, 3, 5))
  with pytest.raises(ValueError, match='no example of class label 7'):
    datasets.load('digits', 'test')
