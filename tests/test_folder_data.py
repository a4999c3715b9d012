"""Tests for tljax.folder_data on small generated image-folder trees."""

import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tljax import folder_data

# Class -> colour; class folder names are unsorted on purpose (sorted: B, f, s).
COLOURS = {'street': (40, 60, 220), 'Buildings': (220, 40, 40),
           'forest': (30, 200, 50)}
SORTED = ['Buildings', 'forest', 'street']
# file name -> (PIL mode, format); 'L' files are grayscale of value GRAY.
TRAIN_FILES = {'a.png': ('RGB', 'PNG'), 'b.jpg': ('RGB', 'JPEG'),
               'c.PNG': ('L', 'PNG')}
TEST_FILES = {'x.jpeg': ('RGB', 'JPEG'), 'y.png': ('L', 'PNG')}
GRAY = 128
LAYOUTS = {'plain': ('train', 'test'),
           'intel': ('seg_train/seg_train', 'seg_test/seg_test'),
           'seg': ('seg_train', 'seg_test')}


def _write(path, mode, fmt, colour):
  """Writes a solid 20x17 image (width 20, height 17)."""
  value = GRAY if mode == 'L' else colour
  Image.new(mode, (20, 17), value).save(path, format=fmt, quality=95)


def _make_tree(root, layout='plain'):
  """A 3-class tree; returns root. Stray non-image files must be ignored."""
  for split_dir, files in zip(LAYOUTS[layout], (TRAIN_FILES, TEST_FILES)):
    for name, colour in COLOURS.items():
      class_dir = os.path.join(root, split_dir, name)
      os.makedirs(class_dir)
      for file, (mode, fmt) in files.items():
        _write(os.path.join(class_dir, file), mode, fmt, colour)
      with open(os.path.join(class_dir, 'notes.txt'), 'w') as f:
        f.write('not an image')
    os.makedirs(os.path.join(root, split_dir, '.ipynb_checkpoints'))
  return str(root)


def _expected(files):
  """(label, rgb in [0,1]) per example in the documented order."""
  out = []
  for label, name in enumerate(SORTED):
    for file in sorted(files):
      gray = files[file][0] == 'L'
      out.append((label, np.array((GRAY,) * 3 if gray else COLOURS[name]) / 255))
  return out


def _arrays(ds):
  images, labels = zip(*ds.as_numpy_iterator())
  return np.stack(images), np.array(labels)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  return _make_tree(tmp_path_factory.mktemp('plain'))


def test_tensorflow_sees_no_gpu():
  assert tf.config.get_visible_devices('GPU') == []


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_find_split_dir_layouts(tmp_path, layout):
  root = _make_tree(tmp_path, layout)
  for split, rel in zip(('train', 'test'), LAYOUTS[layout]):
    assert folder_data.find_split_dir(root, split) == os.path.join(root, rel)
  assert folder_data.class_names(root) == SORTED
  ds, n, names = folder_data.load_split(root, 'test', 6, 3)
  assert (n, names) == (6, SORTED)
  _, labels = _arrays(ds)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])


def test_missing_split_names_root_and_layouts(tmp_path):
  os.makedirs(tmp_path / 'train' / 'a')
  with pytest.raises(ValueError) as e:
    folder_data.find_split_dir(str(tmp_path), 'test')
  message = str(e.value)
  assert str(tmp_path) in message
  for rel in ('test', 'seg_test/seg_test', 'seg_test'):
    assert os.path.join(str(tmp_path), rel, '<class>') in message
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / 'nowhere'))):
    folder_data.class_names(str(tmp_path / 'nowhere'))
  with pytest.raises(ValueError, match='split must be one of'):
    folder_data.find_split_dir(str(tmp_path), 'val')


@pytest.mark.parametrize('split,files', [('train', TRAIN_FILES),
                                         ('test', TEST_FILES)])
def test_rgb_labels_shapes_and_values(tree, split, files):
  ds, n, names = folder_data.load_split(tree, split, 8, 3)
  assert names == SORTED and n == 3 * len(files)
  assert ds.element_spec == (tf.TensorSpec((8, 8, 3), tf.float32),
                             tf.TensorSpec((), tf.int32))
  images, labels = _arrays(ds)
  assert images.shape == (n, 8, 8, 3) and labels.dtype == np.int32
  assert images.min() >= 0.0 and images.max() <= 1.0
  expected = _expected(files)
  np.testing.assert_array_equal(labels, [label for label, _ in expected])
  for image, (_, rgb) in zip(images, expected):
    np.testing.assert_allclose(image, np.broadcast_to(rgb, image.shape),
                               atol=0.03)  # JPEG of a solid colour


def test_grayscale_channel(tree):
  ds, n, _ = folder_data.load_split(tree, 'train', 5, 1)
  images, labels = _arrays(ds)
  assert images.shape == (n, 5, 5, 1) and images.dtype == np.float32
  weights = np.array([0.2989, 0.587, 0.114])  # tf.image.rgb_to_grayscale
  for image, (label, rgb) in zip(images, _expected(TRAIN_FILES)):
    np.testing.assert_allclose(image, rgb @ weights, atol=0.03)
  assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize('channels', [1, 3])
def test_resize_matches_tf_bilinear(tmp_path, channels):
  os.makedirs(tmp_path / 'train' / 'only')
  pixels = np.random.default_rng(0).integers(0, 256, (17, 20, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'train' / 'only' / 'noise.png')
  ds, _, _ = folder_data.load_split(str(tmp_path), 'train', 12, channels)
  images, _ = _arrays(ds)
  want = tf.image.resize(pixels / 255, (12, 12), 'bilinear', antialias=False)
  if channels == 1:
    want = tf.image.rgb_to_grayscale(want)
  np.testing.assert_allclose(images[0], want.numpy(), atol=1e-6)


def test_order_is_deterministic(tree):
  first, labels = _arrays(folder_data.load_split(tree, 'train', 4, 3)[0])
  second, _ = _arrays(folder_data.load_split(tree, 'train', 4, 3)[0])
  np.testing.assert_array_equal(first, second)
  assert list(labels) == sorted(labels)
  ds = folder_data.load_split(tree, 'train', 4, 3)[0]
  a, b = (_arrays(ds.shuffle(9, seed=3))[1] for _ in range(2))
  np.testing.assert_array_equal(a, b)
  assert sorted(a) == sorted(labels)


def test_empty_class_folder_is_an_error(tmp_path, tree):
  root = str(tmp_path / 'copy')
  shutil.copytree(tree, root)
  empty = os.path.join(root, 'train', 'mountain')
  os.makedirs(empty)
  with open(os.path.join(empty, 'readme.txt'), 'w') as f:
    f.write('no images here')
  with pytest.raises(ValueError, match=re.escape(empty)):
    folder_data.class_names(root)
  shutil.rmtree(empty)
  empty_test = os.path.join(root, 'test', 'forest')
  shutil.rmtree(empty_test)
  os.makedirs(empty_test)
  with pytest.raises(ValueError, match=re.escape(empty_test)):
    folder_data.load_split(root, 'test', 4, 3)


def test_test_only_class_is_an_error(tmp_path, tree):
  root = str(tmp_path / 'copy')
  shutil.copytree(tree, root)
  extra = os.path.join(root, 'test', 'glacier')
  os.makedirs(extra)
  _write(os.path.join(extra, 'g.png'), 'RGB', 'PNG', (255, 255, 255))
  with pytest.raises(ValueError, match=re.escape(extra)):
    folder_data.class_names(root)
  with pytest.raises(ValueError, match=re.escape(extra)):
    folder_data.load_split(root, 'train', 4, 3)


def test_train_only_tree_and_subset_test_classes(tmp_path):
  for name in ('a', 'b'):
    os.makedirs(tmp_path / 'train' / name)
    _write(tmp_path / 'train' / name / '1.png', 'RGB', 'PNG', (9, 9, 9))
  assert folder_data.class_names(str(tmp_path)) == ['a', 'b']
  os.makedirs(tmp_path / 'test' / 'b')
  _write(tmp_path / 'test' / 'b' / '1.bmp', 'RGB', 'BMP', (9, 9, 9))
  _, labels = _arrays(folder_data.load_split(str(tmp_path), 'test', 3, 3)[0])
  assert labels.tolist() == [1]


@pytest.mark.parametrize('victim', ['forest/b.jpg', 'street/c.PNG'])
@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_corrupt_image_names_the_file(tmp_path, tree, victim, damage):
  root = str(tmp_path / 'copy')
  shutil.copytree(tree, root)
  path = os.path.join(root, 'train', victim)
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(b'these are not image bytes' if damage == 'garbage'
            else data[:len(data) // 2])
  assert folder_data.verify_images(root, 'test') == 6
  with pytest.raises(ValueError, match=re.escape(path)):
    folder_data.verify_images(root, 'train')
  ds, _, _ = folder_data.load_split(root, 'train', 4, 3)
  with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(path)):
    list(ds.as_numpy_iterator())
  shuffled = ds.shuffle(9, seed=0).batch(4)
  with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(path)):
    list(shuffled.as_numpy_iterator())


def test_argument_checks(tree):
  with pytest.raises(ValueError, match='channels'):
    folder_data.load_split(tree, 'train', 8, 2)
  with pytest.raises(ValueError, match='image_size'):
    folder_data.load_split(tree, 'train', 0, 3)
