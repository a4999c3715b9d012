"""Image folders as users have them: listing, preparing at the model's input, the cache, errors."""

import glob
import json
import os
import re
import shutil
import signal
import threading
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tljax.data import datasets
from tljax.data import folders
from tljax.data import prepare
from tljax.runtime import interrupt

# Class folder -> colour. Names with spaces, upper case, unsorted on purpose (sorted: B, f, s).
COLOURS = {'street scenes': (40, 60, 220), 'Buildings': (220, 40, 40), 'forest': (30, 200, 50)}
SORTED = ['Buildings', 'forest', 'street scenes']
# file (relative to its class folder) -> (PIL mode, format, (width, height)).
TRAIN_FILES = {'a.png': ('RGB', 'PNG', (20, 17)), 'b.jpg': ('RGB', 'JPEG', (40, 30)),
               'c.PNG': ('L', 'PNG', (9, 12)), 'deeper/d.JPEG': ('RGB', 'JPEG', (64, 64)),
               'e.bmp': ('RGB', 'BMP', (8, 8)), 'f.gif': ('P', 'GIF', (16, 16))}
TEST_FILES = {'x.jpeg': ('RGB', 'JPEG', (33, 21)), 'y.png': ('L', 'PNG', (5, 5))}
STRAYS = ('.DS_Store', 'Thumbs.db', 'README')
GRAY = 128
LAYOUTS = {'plain': ('train', 'test'),
           'intel': ('seg_train/seg_train', 'seg_test/seg_test'),
           'seg': ('seg_train', 'seg_test')}
FIT8 = datasets.ModelInput(8, 3)


def _write(path, mode, fmt, size, colour):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  value = GRAY if mode == 'L' else colour
  image = Image.new('RGB' if mode == 'P' else mode, size, value)
  if mode == 'P':
    image = image.convert('P')
  image.save(path, format=fmt, quality=95)


def _make_tree(root, layout='plain'):
  """A 3-class tree with stray non-image files; returns root."""
  for split_dir, files in zip(LAYOUTS[layout], (TRAIN_FILES, TEST_FILES)):
    for name, colour in COLOURS.items():
      class_dir = os.path.join(root, split_dir, name)
      for file, (mode, fmt, size) in files.items():
        _write(os.path.join(class_dir, file), mode, fmt, size, colour)
      for stray in STRAYS:
        with open(os.path.join(class_dir, stray), 'w') as f:
          f.write('not an image')
    os.makedirs(os.path.join(root, split_dir, '.ipynb_checkpoints'))
  return str(root)


def _expected(files, channels=3):
  """(label, pixel value in [0, 255]) per example in the documented order (class, then path)."""
  out = []
  for label, name in enumerate(SORTED):
    for file in sorted(files):
      rgb = np.array((GRAY,) * 3 if files[file][0] == 'L' else COLOURS[name], np.float64)
      out.append((label, rgb @ [0.2989, 0.587, 0.114] if channels == 1 else rgb))
  return out


def _load(root, split, model_input=FIT8, **kw):
  return datasets.load('image_folder', split, root=root, model_input=model_input, **kw)


@pytest.fixture()
def tree(tmp_path):
  return _make_tree(tmp_path / 'tree')


@pytest.fixture()
def model_input(tmp_path):
  return datasets.ModelInput(8, 3, str(tmp_path / 'cache'))


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_layouts_and_class_names(tmp_path, layout):
  root = _make_tree(tmp_path, layout)
  for split, rel in zip(('train', 'test'), LAYOUTS[layout]):
    assert folders.find_split_dir(root, split) == os.path.join(root, rel)
  assert folders.class_names(root) == SORTED
  listing = folders.list_split(root, 'test')
  assert len(listing) == 6 and listing.labels.tolist() == [0, 0, 1, 1, 2, 2]
  assert len(listing.ignored) == 3 * len(STRAYS)


def test_missing_split_names_root_and_layouts(tmp_path):
  os.makedirs(tmp_path / 'train' / 'a')
  with pytest.raises(ValueError) as e:
    folders.find_split_dir(str(tmp_path), 'test')
  message = str(e.value)
  for rel in ('test', 'seg_test/seg_test', 'seg_test'):
    assert os.path.join(str(tmp_path), rel, '<class>') in message
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / 'nowhere')) + '.*not a directory'):
    folders.class_names(str(tmp_path / 'nowhere'))


@pytest.mark.parametrize('channels', [3, 1])
def test_prepared_at_the_model_input_uint8(tree, tmp_path, channels):
  """Every file kind decodes, mixed sizes are fitted to 8x8, nested files and symlinks count."""
  os.symlink(os.path.join(tree, 'test', 'forest', 'x.jpeg'),
             os.path.join(tree, 'test', 'forest', 'z_link.jpg'))
  mi = datasets.ModelInput(8, channels, str(tmp_path / 'cache'))
  train = _load(tree, 'train', mi)
  assert train.images.shape == (18, 8, 8, channels) and train.images.dtype == np.uint8
  assert train.labels.tolist() == [l for l, _ in _expected(TRAIN_FILES)]
  for image, (_, value) in zip(train.images, _expected(TRAIN_FILES, channels)):
    # JPEG's chroma subsampling blurs a solid colour's edge: compare the mean colour.
    np.testing.assert_allclose(image.mean(axis=(0, 1)), np.broadcast_to(value, (channels,)),
                               atol=4)
  test = _load(tree, 'test', mi)
  assert len(test) == 7 and test.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_antialiased_shrink_and_bilinear_growth_match_tf(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)
  for split in ('train', 'test'):
    for name in ('only', 'other'):  # a classifier needs two classes
      os.makedirs(tmp_path / split / name)
      Image.fromarray(pixels).save(tmp_path / split / name / 'noise.png')
  got = {}
  for side in (8, 50):
    mi = datasets.ModelInput(side, 3, str(tmp_path / 'cache'))
    got[side] = _load(str(tmp_path), 'train', mi).images[0]
    want = tf.image.resize(pixels.astype(np.float32), (side, side), 'bilinear', antialias=True)
    np.testing.assert_array_equal(got[side],
                                  np.round(np.clip(want.numpy(), 0, 255)).astype(np.uint8))
  plain = tf.image.resize(pixels.astype(np.float32), (8, 8), 'bilinear').numpy()
  assert np.abs(got[8] - plain).max() > 10  # shrinking without antialiasing would alias


def test_pad_rule_pads_smaller_images_only(tmp_path):
  small = np.full((28, 28, 3), 200, np.uint8)
  big = np.full((40, 40, 3), 100, np.uint8)
  d = tmp_path / 'c'
  d.mkdir()
  Image.fromarray(small).save(d / 'a.png')
  Image.fromarray(big).save(d / 'b.png')
  paths = [str(d / 'a.png'), str(d / 'b.png')]
  out = np.zeros((2, 32, 32, 1), np.uint8)
  prepare.decode_into(paths, prepare.Fit(32, 1, 'pad'), out)
  assert out[0, 0, 0, 0] == 0 and out[0, 2, 2, 0] == 200 and out[0, 29, 29, 0] == 200
  assert out[0, 30, 30, 0] == 0
  assert (out[1] == 100).all()


def test_prepared_once_then_reused_and_keyed_by_fingerprint(tree, model_input, monkeypatch):
  first = _load(tree, 'train', model_input)
  calls = []
  real = prepare.decode_into
  monkeypatch.setattr(prepare, 'decode_into', lambda *a, **k: calls.append(1) or real(*a, **k))
  again = _load(tree, 'train', model_input)
  np.testing.assert_array_equal(first.images, again.images)
  assert not calls  # nothing decoded on the second run
  moved = tree + '_moved'
  shutil.copytree(tree, moved, copy_function=shutil.copy2)  # same files, same mtimes
  _load(moved, 'train', model_input)
  assert not calls
  path = os.path.join(tree, 'train', 'forest', 'a.png')
  _write(path, 'RGB', 'PNG', (20, 17), (1, 2, 3))  # same name, new content
  os.utime(path, ns=(1, 10**18))
  changed = _load(tree, 'train', model_input)
  assert calls
  assert not np.array_equal(changed.images, first.images)
  _load(tree, 'train', datasets.ModelInput(9, 3, model_input.cache_dir))  # another size: new entry
  assert len(calls) == 2


def test_over_the_budget_it_stays_a_memory_map(tree, tmp_path):
  small = datasets.ModelInput(8, 3, str(tmp_path / 'cache'), memory_budget_bytes=100)
  mapped = _load(tree, 'train', small)
  assert isinstance(mapped.images, np.memmap) and not mapped.images.flags.writeable
  in_ram = _load(tree, 'train', datasets.ModelInput(8, 3, str(tmp_path / 'cache')))
  assert not isinstance(in_ram.images, np.memmap)
  np.testing.assert_array_equal(mapped.images, in_ram.images)
  prep = lambda x: x
  a = [x for x, _ in datasets.train_batches(mapped, 4, seed=1, epoch=2, prep=prep)]
  b = [x for x, _ in datasets.train_batches(in_ram, 4, seed=1, epoch=2, prep=prep)]
  assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_class_subsets_on_folders(tree, model_input):
  sel = _load(tree, 'test', model_input, classes=(2, 0))
  assert sel.num_classes == 2 and sel.labels.tolist() == [1, 1, 0, 0]
  with pytest.raises(ValueError, match=r"Bad classes \(0, 3\).*0=Buildings, 1=forest"):
    _load(tree, 'test', model_input, classes=(0, 3))


def test_stray_files_are_ignored_and_counted_once(tree, model_input, monkeypatch):
  messages = []
  monkeypatch.setattr(datasets.logging, 'info', lambda msg, *args: messages.append(msg % args))
  _load(tree, 'test', model_input)
  ignored = [m for m in messages if 'not images by extension' in m]
  assert len(ignored) == 1 and 'ignored 9 files' in ignored[0] and '.DS_Store' in ignored[0]


@pytest.mark.parametrize('victim', ['forest/b.jpg', 'street scenes/c.PNG'])
@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_an_image_that_does_not_decode_is_named(tree, model_input, victim, damage):
  path = os.path.join(tree, 'train', victim)
  blob = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(b'these are not image bytes' if damage == 'garbage' else blob[:len(blob) // 2])
  with pytest.raises(ValueError, match=re.escape(path)):
    _load(tree, 'train', model_input)
  assert not os.listdir(os.path.join(model_input.cache_dir, 'prepared'))  # nothing half-written


def test_empty_class_folder_and_test_only_class_are_errors(tree, model_input):
  empty = os.path.join(tree, 'test', 'forest')
  shutil.rmtree(empty)
  os.makedirs(empty)
  with open(os.path.join(empty, 'README'), 'w') as f:
    f.write('no images here')
  with pytest.raises(ValueError, match=re.escape(empty) + '.* no image files'):
    _load(tree, 'test', model_input)
  extra = os.path.join(tree, 'test', 'glacier')
  _write(os.path.join(extra, 'g.png'), 'RGB', 'PNG', (4, 4), (255, 255, 255))
  with pytest.raises(ValueError, match=re.escape(extra) + '.*no counterpart'):
    _load(tree, 'train', model_input)


def test_dry_run_lists_classes_without_decoding(tree, model_input, monkeypatch):
  monkeypatch.setattr(prepare, 'decode_into', lambda *a, **k: pytest.fail('decoded'))
  arrays = _load(tree, 'train', model_input, mock=True, mock_examples=70)
  assert arrays.images.shape == (70, 8, 8, 3) and arrays.num_classes == 3
  with pytest.raises(ValueError, match='not a directory'):
    _load(tree + '_missing', 'train', model_input, mock=True)


def test_identity_changes_with_the_files_not_the_path(tree, tmp_path):
  a = datasets.identity('image_folder', root=tree)
  assert a['train']['files'] == 18 and a['test']['files'] == 6
  moved = str(tmp_path / 'moved')
  shutil.copytree(tree, moved, copy_function=shutil.copy2)
  b = datasets.identity('image_folder', root=moved)
  assert {k: v for k, v in a.items() if k != 'root'} == {k: v for k, v in b.items() if k != 'root'}
  os.remove(os.path.join(moved, 'test', 'forest', 'y.png'))
  c = datasets.identity('image_folder', root=moved)
  assert c['test'] != b['test'] and c['train'] == b['train']


def test_a_class_missing_from_a_split_stops_before_anything_is_decoded(tree, model_input,
                                                                        monkeypatch):
  shutil.rmtree(os.path.join(tree, 'test', 'forest'))  # train has forest images, test none
  monkeypatch.setattr(prepare, 'decode_into', lambda *a, **k: pytest.fail('decoded'))
  where = re.escape(f"Split 'test' of dataset 'image_folder' ({os.path.join(tree, 'test')})")
  for split, mock in (('train', False), ('test', False), ('train', True)):
    with pytest.raises(ValueError, match=where + r" has no example of class 'forest' \(label 1\)"
                       r'.*every split must hold every class.*classes=\(0, 2\)\.$'):
      _load(tree, split, model_input, mock=mock)
  monkeypatch.undo()
  sel = _load(tree, 'test', model_input, classes=(0, 2))  # the classes both splits hold
  assert sel.num_classes == 2 and sel.labels.tolist() == [0, 0, 1, 1]


def test_fewer_than_two_classes_is_an_error_that_says_so(tree, tmp_path, model_input):
  root = tmp_path / 'one'
  for split, n in (('train', 24), ('test', 4)):
    for i in range(n):
      _write(str(root / split / 'dog' / f'{i}.png'), 'RGB', 'PNG', (4, 4), (9, 9, 9))
  with pytest.raises(ValueError, match=re.escape(f"Split 'train' of dataset 'image_folder' ({root}"
                                                 f"{os.sep}train): only 1 class ('dog' (label 0)); "
                                                 'a classifier needs two or more: add another')):
    _load(str(root), 'train', model_input)
  with pytest.raises(ValueError, match=r"only 1 class \('street scenes' \(label 2\)\).*select "
                     'two or more with classes'):
    _load(tree, 'test', model_input, classes=(2,))


def _noise_tree(root, n):
  """`n` train and 4 test 16x16 noise PNGs over two classes; returns root."""
  rng = np.random.default_rng(0)
  for split, count in (('train', n), ('test', 4)):
    for i in range(count):
      os.makedirs(root / split / f'c{i % 2}', exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
          root / split / f'c{i % 2}' / f'{i:04d}.png')
  return str(root)


def _interrupt_after(monkeypatch, n):
  """Counts decoded images; sets the interrupt flag from a tf.data worker thread (as SIGINT's
  watcher thread does) at the n-th, once. Returns (decoded indices, [time the flag was set])."""
  decoded, asked = [], []
  real = prepare._decode_fn  # pylint: disable=protected-access

  def count(i):
    decoded.append(int(i))
    if len(decoded) == n and not asked:  # once
      asked.append(time.perf_counter())
      interrupt.request(signal.SIGINT)
    return i

  def counting(fit):
    decode = real(fit)

    def wrapped(path, index):
      index = tf.numpy_function(count, [index], tf.int32, stateful=True)
      index.set_shape(())
      return decode(path, index)
    return wrapped
  monkeypatch.setattr(prepare, '_decode_fn', counting)
  return decoded, asked


def _interrupted_load(root, model_input):
  try:
    with pytest.raises(interrupt.Interrupted, match='while decoding images of .*train; those '
                       r'decoded are kept in .*\.partial: a rerun decodes only the rest') as e:
      _load(root, 'train', model_input)
    return time.perf_counter(), e.value
  finally:
    interrupt.reset()


def test_ctrl_c_while_preparing_stops_at_once_and_the_rerun_decodes_only_the_rest(
    tmp_path, monkeypatch):
  n = 400
  root = _noise_tree(tmp_path / 'noise', n)
  reference = _load(root, 'train', datasets.ModelInput(24, 3, str(tmp_path / 'ref')))
  mi = datasets.ModelInput(24, 3, str(tmp_path / 'cache'))
  decoded, asked = _interrupt_after(monkeypatch, 100)
  stopped, e = _interrupted_load(root, mi)
  assert e.signum == signal.SIGINT and stopped - asked[0] < 1.0
  assert len(decoded) < n  # it did not run to the end
  prepared = os.path.join(mi.cache_dir, 'prepared')
  (partial,) = glob.glob(os.path.join(prepared, '*'))  # no finished cache, no lock file
  assert partial.endswith('.partial') and not os.path.exists(os.path.join(partial, prepare.DONE))
  with open(os.path.join(partial, prepare.PROGRESS)) as f:
    done = json.load(f)['done']
  assert 0 < done <= len(decoded)
  kept = np.load(os.path.join(partial, 'images.npy'), mmap_mode='r')
  np.testing.assert_array_equal(kept[:done], reference.images[:done])
  decoded.clear()
  again = _load(root, 'train', mi)
  assert sorted(decoded) == list(range(done, n))  # the rerun decoded only the rest
  np.testing.assert_array_equal(again.images, reference.images)
  (final,) = glob.glob(os.path.join(prepared, '*'))
  (ref,) = glob.glob(os.path.join(tmp_path / 'ref', 'prepared', 'train_*'))
  assert os.path.basename(final) == os.path.basename(ref)
  with open(os.path.join(final, 'images.npy'), 'rb') as a, open(
      os.path.join(ref, 'images.npy'), 'rb') as b:
    assert a.read() == b.read()  # the same cache file, byte for byte


def test_a_folder_changed_after_ctrl_c_never_reuses_the_partial_preparation(
    tmp_path, monkeypatch):
  n = 400
  root = _noise_tree(tmp_path / 'noise', n)
  mi = datasets.ModelInput(24, 3, str(tmp_path / 'cache'))
  decoded, _ = _interrupt_after(monkeypatch, 100)
  _interrupted_load(root, mi)
  (stale,) = glob.glob(os.path.join(mi.cache_dir, 'prepared', '*.partial'))
  first = os.path.join(root, 'train', 'c0', '0000.png')
  Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(first)  # within the decoded part
  os.utime(first, ns=(1, 10**18))
  decoded.clear()
  changed = _load(root, 'train', mi)
  assert sorted(decoded) == list(range(n))  # everything decoded again
  assert (changed.images[0] == 7).all()
  assert not os.path.exists(stale)  # the stale partial preparation is removed
  assert [os.path.basename(p).startswith('train_') and not p.endswith('.partial')
          for p in glob.glob(os.path.join(mi.cache_dir, 'prepared', '*'))] == [True]


def test_two_processes_preparing_one_split_decode_it_once(tmp_path, monkeypatch):
  root = _noise_tree(tmp_path / 'noise', 200)
  mi = datasets.ModelInput(24, 3, str(tmp_path / 'cache'))
  decoded, _ = _interrupt_after(monkeypatch, -1)  # counts only
  got = [None, None]
  threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, _load(root, 'train', mi)))
             for i in range(2)]  # two opens of the lock file conflict as two processes' do
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(decoded) == list(range(200))  # one of them decoded, the other waited
  np.testing.assert_array_equal(got[0].images, got[1].images)
  assert [os.path.basename(p)[:6] for p in glob.glob(os.path.join(mi.cache_dir, 'prepared', '*'))
          ] == ['train_']  # no lock file, no partial preparation left
