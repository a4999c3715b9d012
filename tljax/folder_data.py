"""Image-folder dataset source: `<split>/<class>/<image>` trees (Intel scenes, users' own images) as tf.data."""

import os

from PIL import Image
import tensorflow as tf

# TensorFlow only feeds the input pipeline; keep it off the accelerators JAX uses.
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # devices already initialized, or none to hide
  pass

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
SPLITS = ('train', 'test')
DECODE_ERROR = 'Could not read or decode image file'
VERIFY_HINT = '(tljax.folder_data.verify_images(root, split) says why)'


def _layouts(root, split):
  """The split directories accepted for `split`, in order of preference."""
  seg = 'seg_' + split
  return (os.path.join(root, split), os.path.join(root, seg, seg),
          os.path.join(root, seg))


def find_split_dir(root, split):
  """Directory holding the class folders of `split` ('train' or 'test') under `root`.

  Accepts `root/<split>/<class>`, the Intel download's
  `root/seg_<split>/seg_<split>/<class>` and `root/seg_<split>/<class>`.
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  candidates = _layouts(root, split)
  for path in candidates:
    if os.path.isdir(path):
      return path
  raise ValueError(
      f'No {split} split under {root}; accepted layouts: '
      + ', '.join(os.path.join(p, '<class>', '<image>') for p in candidates))


def _is_image(name):
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(split_dir):
  """Sorted class folder names of a split directory (hidden folders skipped)."""
  return sorted(e.name for e in os.scandir(split_dir)
                if e.is_dir() and not e.name.startswith('.'))


def _images(class_dir):
  """Sorted image file paths directly inside `class_dir`; an error if none."""
  files = sorted(e.name for e in os.scandir(class_dir)
                 if e.is_file() and _is_image(e.name))
  if not files:
    raise ValueError(f'Class folder {class_dir} holds no image files '
                     f'({", ".join(IMAGE_EXTENSIONS)})')
  return [os.path.join(class_dir, f) for f in files]


def class_names(root):
  """Sorted class folder names of the train split, checked against the test split.

  Every class folder must hold at least one image, and the test split (when
  present) may not hold a class that train lacks.
  """
  train_dir = find_split_dir(root, 'train')
  names = _class_dirs(train_dir)
  if not names:
    raise ValueError(f'No class folders in {train_dir}')
  for name in names:
    _images(os.path.join(train_dir, name))
  try:
    test_dir = find_split_dir(root, 'test')
  except ValueError:
    return names
  for name in _class_dirs(test_dir):
    if name not in names:
      raise ValueError(f'Class folder {os.path.join(test_dir, name)} has no '
                       f'counterpart in the train split {train_dir}')
  return names


def list_split(root, split):
  """(paths, labels, class_names) of `split`, sorted by class then file name."""
  names = class_names(root)
  split_dir = find_split_dir(root, split)
  paths, labels = [], []
  for name in _class_dirs(split_dir):
    files = _images(os.path.join(split_dir, name))
    paths += files
    labels += [names.index(name)] * len(files)
  return paths, labels, names


def verify_images(root, split):
  """Checks every image of `split` with PIL; ValueError naming the first bad file.

  Returns the number of files checked. PIL's verify() reads headers and
  structure, not every pixel, so it is fast but may pass a file that decoding
  later rejects (load_split names such files too).
  """
  paths, _, _ = list_split(root, split)
  for path in paths:
    try:
      with Image.open(path) as image:
        image.verify()
    except Exception as e:  # PIL raises many types for bad files
      raise ValueError(f'{DECODE_ERROR} {path}: {e}') from e
  return len(paths)


def load_split(root, split, image_size, channels):
  """(dataset, num_examples, class_names) for `split` of an image-folder tree.

  The dataset yields (image float32 [image_size, image_size, channels] in
  [0, 1], label int32) in a fixed order (class, then file name), so a seeded
  shuffle downstream is reproducible. channels: 3 = RGB (grayscale expanded),
  1 = grayscale. A file that cannot be read or decoded stops iteration with
  tf.errors.InvalidArgumentError whose message names the file: decoding errors
  are caught in the pipeline, and a gap in the sequence of example indices is
  turned into an assertion carrying the missing file's path, so nothing is
  ever skipped silently.
  """
  if channels not in (1, 3):
    raise ValueError(f'channels must be 1 or 3, got {channels!r}')
  if not isinstance(image_size, int) or image_size < 1:
    raise ValueError(f'image_size must be a positive int, got {image_size!r}')
  paths, labels, names = list_split(root, split)
  n = len(paths)
  paths_t = tf.constant(paths)

  def decode(path, label, index):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               dtype=tf.float32, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size),
                            method='bilinear', antialias=False)
    if channels == 1:
      image = tf.image.rgb_to_grayscale(image)
    return tf.clip_by_value(image, 0.0, 1.0), label, index

  ds = tf.data.Dataset.from_tensor_slices(
      (paths_t, tf.constant(labels, tf.int32), tf.range(n, dtype=tf.int64)))
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors()
  # A sentinel with index n lets the check below notice a failed last file.
  sentinel = (tf.zeros((image_size, image_size, channels)),
              tf.constant(-1, tf.int32), tf.constant(n, tf.int64))
  ds = ds.concatenate(tf.data.Dataset.from_tensors(sentinel))

  def check(expected, example):
    image, label, index = example
    missing = tf.gather(paths_t, tf.minimum(expected, n - 1))
    ok = tf.debugging.Assert(tf.equal(index, expected),
                             [DECODE_ERROR, missing, VERIFY_HINT])
    with tf.control_dependencies([ok]):
      return index + 1, (tf.identity(image), label)

  ds = ds.scan(tf.constant(0, tf.int64), check)
  ds = ds.filter(lambda image, label: label >= 0)
  return ds, n, names
