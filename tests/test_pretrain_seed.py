"""One pretraining for every seed (config.pretrain_seed), or one per seed (-1)."""

import os

import pytest

from tljax.sweep import layout
from tljax.sweep import runner


def _pretrained_dirs(cache):
  return sorted(d for d in os.listdir(os.path.join(cache, 'pretrained')) if '.tmp' not in d)


def test_every_seed_fine_tunes_one_pretrained_model_unless_told_otherwise(tiny_config, tmp_path):
  tiny_config.cases = ('last:1',)
  tiny_config.seeds = (0, 1)
  shared = runner.train_and_evaluate(tiny_config, str(tmp_path / 'shared'))
  assert len(_pretrained_dirs(tiny_config.cache_dir)) == 1
  assert shared['pretraining']['0'] == shared['pretraining']['1']
  assert shared['pretraining']['1']['seed'] == 0
  s0, s1 = shared['runs']
  assert s0['test_loss'] != s1['test_loss']  # the seeds still differ: head, data order, dropout
  # The workdir's runs started from seed 0's model: another pretrain_seed is refused there.
  tiny_config.pretrain_seed = -1
  with pytest.raises(layout.ConfigChangedError, match=r'pretrain_seed: 0 -> -1'):
    runner.train_and_evaluate(tiny_config, str(tmp_path / 'shared'))
  own = runner.train_and_evaluate(tiny_config, str(tmp_path / 'own'))
  assert len(_pretrained_dirs(tiny_config.cache_dir)) == 2  # seed 0's model reused, seed 1's new
  assert own['pretraining']['1']['seed'] == 1
  o0, o1 = own['runs']
  assert o0['test_loss'] == s0['test_loss'] and o1['test_loss'] != s1['test_loss']
