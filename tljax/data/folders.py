"""Image-folder trees: `<split>/<class>/**/<image>` layouts, their listing and their fingerprint."""

import dataclasses
import hashlib
import os

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
SPLITS = ('train', 'test')


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
  if not os.path.isdir(root):
    raise ValueError(f'The image-folder root {root} is not a directory.')
  candidates = _layouts(root, split)
  for path in candidates:
    if os.path.isdir(path):
      return path
  raise ValueError(
      f'No {split} split under {root}; accepted layouts: '
      + ', '.join(os.path.join(p, '<class>', '<image>') for p in candidates))


def has_split(root, split):
  """Whether `root` (may be empty) holds a `split` directory in an accepted layout."""
  return bool(root) and any(os.path.isdir(p) for p in _layouts(root, split))


def is_image(name):
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(split_dir):
  """Sorted class folder names of a split directory (hidden folders skipped)."""
  return sorted(e.name for e in os.scandir(split_dir)
                if e.is_dir() and not e.name.startswith('.'))


def _walk(class_dir):
  """(image paths sorted by their path below `class_dir`, names of other files).

  Subfolders are searched too (not hidden ones); symlinked files are followed.
  """
  images, other = [], []
  for top, dirs, files in os.walk(class_dir):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    for f in files:
      (images if is_image(f) else other).append(os.path.join(top, f))
  return sorted(images), other


@dataclasses.dataclass
class Listing:
  """The image files of one split: paths in a fixed order (class, then path), labels, classes."""
  root: str
  split: str
  split_dir: str
  class_names: list
  paths: list
  labels: np.ndarray  # int32, index into class_names
  ignored: list  # files skipped because their extension is not an image's

  def __len__(self):
    return len(self.paths)

  def fingerprint(self):
    """sha256 of every image's path (relative to the split), size and modification time."""
    h = hashlib.sha256()
    for path in self.paths:
      st = os.stat(path)
      rel = os.path.relpath(path, self.split_dir)
      h.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()


def _class_images(class_dir):
  images, other = _walk(class_dir)
  if not images:
    raise ValueError(f'Class folder {class_dir} holds no image files '
                     f'({", ".join(IMAGE_EXTENSIONS)}, any case)')
  return images, other


def class_names(root):
  """Sorted class folder names of the train split, checked against the test split.

  Every class folder must hold at least one image, and the test split (when
  present) may not hold a class that train lacks.
  """
  train_dir = find_split_dir(root, 'train')
  names = _class_dirs(train_dir)
  if not names:
    raise ValueError(f'No class folders in {train_dir}: expected {train_dir}/<class>/<image>.')
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
  """The Listing of `split` under `root`; an error naming an empty or stray class folder."""
  names = class_names(root)
  split_dir = find_split_dir(root, split)
  paths, labels, ignored = [], [], []
  for name in _class_dirs(split_dir):
    files, other = _class_images(os.path.join(split_dir, name))
    paths += files
    ignored += other
    labels += [names.index(name)] * len(files)
  return Listing(root, split, split_dir, names, paths, np.asarray(labels, np.int32), ignored)


def checked_listing(name, split, root, expected=None):
  """list_split, with an error naming the config fields when there is no root, and one when
  the classes differ from those dataset `name` expects (`expected`, lower case)."""
  if not root:
    raise ValueError(f'Dataset {name!r} needs the folder root: --config.source_data_dir=ROOT or '
                     '--config.target_data_dir=ROOT (with train/<class>/<image> and '
                     'test/<class>/<image> under it).')
  listing = list_split(root, split)
  if expected and tuple(c.lower() for c in listing.class_names) != tuple(expected):
    raise ValueError(f'{root} holds classes {listing.class_names}; dataset {name!r} expects '
                     f'{list(expected)}.')
  return listing
