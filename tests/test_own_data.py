"""Own data end to end: folder -> folder runs, data identity in caches and resume, dry runs."""

import os
import re
import shutil
import threading
import weakref

import pytest

from benchmarks import data as bench_data
from tljax.data import inputs
from tljax.sweep import layout
from tljax.sweep import runner
from tljax.training import prefix_cache
from tljax.training import pretrain


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """A 4-class source and a 3-class target folder of 16x16 JPEGs (the model takes 32x32)."""
  root = tmp_path_factory.mktemp('folders')
  src = bench_data.make_folder(str(root / 'source'), 96, 32, 16, seed=1, classes=4)
  tgt = bench_data.make_folder(str(root / 'target'), 72, 24, 16, seed=2, classes=3)
  return src, tgt


def _folder_config(tiny_config, folders):
  c = tiny_config
  c.source_dataset = c.target_dataset = 'image_folder'
  c.source_classes = c.target_classes = ()
  c.source_data_dir, c.target_data_dir = folders
  c.cases = (1, 23)
  return c


def test_folder_to_folder_run_records_identity_and_keys_pretraining(tiny_config, folders, tmp_path):
  c = _folder_config(tiny_config, folders)
  s = runner.train_and_evaluate(c, str(tmp_path / 'w1'))
  assert s['num_classes'] == 3 and s['train_examples'] == 72 and s['test_examples'] == 24
  assert s['pretraining']['0']['num_classes'] == 4 and s['pretraining']['0']['train_examples'] == 96
  for role, root in zip(('source', 'target'), folders):
    ident = s['data'][role]
    assert ident['root'] == os.path.abspath(root) and len(ident['train']['fingerprint']) == 64
  assert [case['status'] for case in s['cases']] == ['ok', 'ok']
  key = lambda: pretrain.key(c, inputs.data_identity(c)['source'])  # pylint: disable=protected-access
  assert s['pretraining']['0']['path'].endswith(key())
  # A copy with the same files (same mtimes) elsewhere: the same pretrained model.
  moved = str(tmp_path / 'moved_source')
  shutil.copytree(folders[0], moved, copy_function=shutil.copy2)
  c.source_data_dir = moved
  assert s['pretraining']['0']['path'].endswith(key())
  # Another folder of the same layout (new mtimes): not the first folder's pretrained model.
  other = str(tmp_path / 'other_source')
  shutil.copytree(folders[0], other, copy_function=shutil.copy)
  c.source_data_dir = other
  assert not s['pretraining']['0']['path'].endswith(key())


def test_non_folder_source_with_a_folder_target(tiny_config, folders, tmp_path):
  c = _folder_config(tiny_config, folders)
  c.source_dataset, c.source_classes, c.source_data_dir = 'digits', (0, 1, 2, 3, 4), ''
  c.cases = (1,)
  s = runner.train_and_evaluate(c, str(tmp_path / 'w'))
  assert s['pretraining']['0']['dataset'] == 'digits' and s['num_classes'] == 3
  assert s['data']['source'] == {'dataset': 'digits', 'scikit_learn': s['data']['source'][
      'scikit_learn']} and 'train' in s['data']['target']


def test_resume_against_changed_data_is_refused(tiny_config, folders, tmp_path):
  c = _folder_config(tiny_config, folders)
  c.cases = (1,)
  c.pretrained = 'none'
  target = str(tmp_path / 'target')
  shutil.copytree(folders[1], target, copy_function=shutil.copy2)
  c.target_data_dir = target
  work = str(tmp_path / 'w')
  runner.train_and_evaluate(c, work)
  moved = str(tmp_path / 'moved')
  shutil.copytree(target, moved, copy_function=shutil.copy2)
  c.target_data_dir = moved  # the same files elsewhere: same data, resumes
  runner.train_and_evaluate(c, work)
  os.remove(os.path.join(moved, 'test', 'class 0', '000000.jpg'))
  with pytest.raises(layout.ConfigChangedError, match=r'target_data_dir .*test'):
    runner.train_and_evaluate(c, work)
  c.target_data_dir = ''
  with pytest.raises(ValueError, match='config.target_data_dir'):
    runner.train_and_evaluate(c, work)


def test_folders_that_cannot_give_an_honest_accuracy_stop_before_training(
    tiny_config, folders, tmp_path, monkeypatch):
  from tljax.data import prepare  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(prepare, 'decode_into', lambda *a, **k: pytest.fail('decoded'))
  c = _folder_config(tiny_config, folders)
  target = str(tmp_path / 'target')
  shutil.copytree(folders[1], target)
  shutil.rmtree(os.path.join(target, 'test', 'class 1'))  # train images of class 1, no test ones
  c.target_data_dir = target
  with pytest.raises(ValueError, match=re.escape(os.path.join(target, 'test')) + r"\) has no "
                     r"example of class 'class 1' \(label 1\).*config.target_classes=\(0, 2\)"):
    runner.train_and_evaluate(c, str(tmp_path / 'w'))
  one = bench_data.make_folder(str(tmp_path / 'one'), 24, 8, 16, classes=1)
  c.target_data_dir, c.batch_size = one, 32  # 24 training examples: batch_size is wrong too
  with pytest.raises(ValueError, match=r"only 1 class \('class 0' \(label 0\)\); a classifier"):
    runner.train_and_evaluate(c, str(tmp_path / 'w1'))
  assert not os.path.exists(os.path.join(tiny_config.cache_dir, 'prepared'))


def test_dry_run_of_a_folder_config_decodes_nothing(tiny_config, folders, tmp_path, monkeypatch):
  from tljax.data import prepare  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(prepare, 'decode_into', lambda *a, **k: pytest.fail('decoded'))
  c = _folder_config(tiny_config, folders)
  c.dry_run = True
  s = runner.train_and_evaluate(c, str(tmp_path / 'dry'))
  assert s['dry_run'] and s['num_classes'] == 3 and len(s['cases']) == 2
  c.target_data_dir = str(tmp_path / 'missing')
  with pytest.raises(ValueError, match=r'config.target_data_dir=.*missing.*not a directory'):
    runner.train_and_evaluate(c, str(tmp_path / 'dry2'))


def _accounting(case):
  keys = ('train_flops_per_step', 'train_flops_per_example', 'train_memory_bytes',
          'energy_per_step_j', 'forward_flops_per_example', 'batch_size')
  return {k: case[k] for k in keys}


def test_dry_run_accounting_equals_a_real_run_at_the_configured_batch(tiny_config, tmp_path):
  c = tiny_config
  c.pretrained = 'none'
  c.cases = (23,)
  c.batch_size = 128  # above the mock data's 64 examples
  c.steps_per_epoch = 1
  real = runner.train_and_evaluate(c, str(tmp_path / 'real'))
  c.dry_run = True
  dry = runner.train_and_evaluate(c, str(tmp_path / 'dry'))
  for r, d in zip(real['cases'], dry['cases']):
    assert _accounting(r) == _accounting(d)
    assert d['batch_size'] == 128
  c.target_dataset, c.target_classes = 'cifar10', (5, 6, 7, 8, 9)  # mock TFDS data
  mock = runner.train_and_evaluate(c, str(tmp_path / 'mock'))
  assert [_accounting(m) for m in mock['cases']] == [_accounting(r) for r in real['cases']]


def test_no_thread_or_array_outlives_its_case(tiny_config, tmp_path, monkeypatch):
  refs = []
  real_build = prefix_cache.build

  def build(*args, **kwargs):
    cache = real_build(*args, **kwargs)
    refs.append(weakref.ref(cache.train.images))
    return cache

  monkeypatch.setattr(prefix_cache, 'build', build)
  c = tiny_config
  c.pretrained = 'none'
  c.cases = (1, 4)
  c.steps_per_epoch = 2  # leaves each epoch early
  c.epochs = 2
  c.prefix_cache_always = True  # both cases build a cache
  before = {t.ident for t in threading.enumerate()}
  runner.train_and_evaluate(c, str(tmp_path / 'w'))
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()
  # tqdm's monitor thread is tqdm's own, once per process; anything else is a leak (the old
  # prefetch left one blocked worker per early-left epoch, holding its batches).
  leaked = [t.name for t in threading.enumerate()
            if t.ident not in before and t.name != 'tqdm_monitor']
  assert not leaked
  assert len(refs) == 2 and all(r() is None for r in refs)
  assert not [d for d in os.listdir(tmp_path / 'w') if d.startswith('cache_case')]
