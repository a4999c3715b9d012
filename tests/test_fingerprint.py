"""The (case, seed) run is the unit: its record is reused exactly when its own fingerprint
matches, so a finished sweep can grow (more seeds, more cases) without retraining."""

import json
import logging
import os

import pytest

from configs import base
from tljax.config import checks
from tljax.sweep import fingerprints
from tljax.sweep import layout
from tljax.sweep import runner
from tljax.training import case as case_lib
from tljax.training import freezing

SPEC = freezing.CaseSpec('last:1', 'last', (('dense/.*', 'trainable'), ('.*', 'frozen')),
                         ('dense',))


def _changed(v):
  if isinstance(v, bool):
    return not v
  if isinstance(v, (int, float)):
    return v + 1
  if isinstance(v, (tuple, list)):
    return tuple(v) + (99,)
  return v + '/x'


def test_the_fingerprint_covers_every_field_that_changes_numbers_and_nothing_else():
  c = base.get_config()
  fp = fingerprints.run_fingerprint(c, {}, SPEC, 0)
  assert len(fp) == 64 and fp == fingerprints.run_fingerprint(c.to_dict(), {}, SPEC, 0)
  for field in fingerprints.SAFE_FIELDS:  # cases, seeds, name, log_every_steps...: no number
    d = c.to_dict()
    d[field] = _changed(d[field])
    assert fingerprints.run_fingerprint(d, {}, SPEC, 0) == fp, field
  for field in ('name', 'log_every_steps', 'device_xla_check', 'cases', 'seeds'):
    assert field in fingerprints.SAFE_FIELDS, field
  for field in ('learning_rate', 'dry_run', 'epochs', 'e_mac_j', 'model'):
    d = c.to_dict()
    d[field] = _changed(d[field])
    assert fingerprints.run_fingerprint(d, {}, SPEC, 0) != fp, field
  assert fingerprints.run_fingerprint(c, {'train': 'abc'}, SPEC, 0) != fp
  assert fingerprints.run_fingerprint(c, {}, SPEC, 1) != fp  # the run's own seed
  other = freezing.CaseSpec('last:1', 'last', (('conv/.*', 'trainable'), ('.*', 'frozen')),
                            ('conv',))
  assert fingerprints.run_fingerprint(c, {}, other, 0) != fp  # same name, other rules
  newer = dict(fingerprints.versions(), jax='99.0')
  assert fingerprints.run_fingerprint(c, {}, SPEC, 0, tools=newer) != fp  # an upgrade


def test_the_safe_and_pretraining_lists_come_from_the_field_table():
  assert set(fingerprints.SAFE_FIELDS) == {f for f, s in checks.FIELDS.items() if not s.numbers}
  assert set(checks.PRETRAIN_FIELDS) <= {f for f, s in checks.FIELDS.items() if s.numbers}
  from tljax.training import pretrain  # pylint: disable=g-import-not-at-top
  assert pretrain.PRETRAIN_FIELDS == checks.PRETRAIN_FIELDS + ('seed',)


def test_a_record_of_another_fingerprint_is_moved_aside_not_reused(tmp_path, caplog):
  layout.save_done(str(tmp_path), 4, {'case': 4, 'test_accuracy': 0.5}, 'a' * 64)
  assert layout.load_done(str(tmp_path), 4, 'a' * 64) == {'case': 4, 'test_accuracy': 0.5}
  with caplog.at_level(logging.WARNING):
    assert layout.load_done(str(tmp_path), 4, 'b' * 64) is None
  assert 'Run 4: its record was made by another config, data or version' in caplog.text
  assert not os.path.exists(layout.record_path(str(tmp_path), 4))
  kept = tmp_path / 'cases' / 'discarded' / f'4_{"a" * 12}.json'
  assert json.loads(kept.read_text())['test_accuracy'] == 0.5  # kept for the user, never reused
  (tmp_path / 'cases' / '5.json').write_text('{"case": 5}')  # no fingerprint: an old record
  assert layout.load_done(str(tmp_path), 5, 'a' * 64) is None


def test_checkpoints_of_another_fingerprint_are_deleted_per_run(tmp_path):
  step = tmp_path / 'checkpoints' / 'last-9_seed0' / '20'
  other = tmp_path / 'checkpoints' / 'last-1_seed0' / '20'
  step.mkdir(parents=True)
  other.mkdir(parents=True)
  layout.claim_checkpoints(str(tmp_path), 'last-9_seed0', 'a' * 64)  # unmarked: unknown run's
  assert not step.exists() and other.exists()  # another run's checkpoints are not touched
  step.mkdir(parents=True)
  layout.claim_checkpoints(str(tmp_path), 'last-9_seed0', 'a' * 64)  # marked as this run's
  assert step.exists()
  layout.claim_checkpoints(str(tmp_path), 'last-9_seed0', 'b' * 64)
  assert not step.exists() and other.exists()


def _records(workdir):
  d = os.path.join(workdir, 'cases')
  return {n: open(os.path.join(d, n), 'rb').read() for n in os.listdir(d) if n.endswith('.json')}


def test_a_finished_sweep_grows_by_seeds_and_cases_training_only_the_new_runs(
    tiny_config, tmp_path, caplog):
  workdir = str(tmp_path / 'w')
  tiny_config.cases = ('last:1',)
  tiny_config.seeds = (0,)
  first = runner.train_and_evaluate(tiny_config, workdir)
  before = _records(workdir)
  tiny_config.cases = ('last:1', 'last:2')
  tiny_config.seeds = (0, 1)
  tiny_config.name = 'renamed'  # changes no number
  tiny_config.log_every_steps = 2
  with caplog.at_level(logging.INFO):
    grown = runner.train_and_evaluate(tiny_config, workdir)
  assert '2 cases x 2 seeds: 1 run kept, 3 to train.' in caplog.text
  after = _records(workdir)
  assert len(after) == 4
  for name, blob in before.items():
    assert after[name] == blob  # byte-identical: kept, not rewritten
  assert [(r['case'], r['seed']) for r in grown['runs']] == [
      ('last:1', 0), ('last:1', 1), ('last:2', 0), ('last:2', 1)]
  assert grown['runs'][0] == first['runs'][0]
  # A case removed from the config: its records stay on disk, out of the summary.
  tiny_config.cases = ('last:2',)
  shrunk = runner.train_and_evaluate(tiny_config, workdir)
  assert [r['case'] for r in shrunk['cases']] == ['last:2']
  assert _records(workdir) == after
  runs = {json.loads(l)['run'] for l in open(os.path.join(workdir, 'metrics.jsonl'))}
  assert case_lib.run_key('last:1', 1) in runs  # its metrics are kept too


def test_a_number_changing_field_is_still_refused_with_the_list(tiny_config, tmp_path):
  workdir = str(tmp_path / 'w')
  tiny_config.cases = ('last:1',)
  runner.train_and_evaluate(tiny_config, workdir)
  tiny_config.learning_rate = 0.05
  tiny_config.seeds = (0, 1)
  with pytest.raises(layout.ConfigChangedError, match=r'learning_rate: 0\.001 -> 0\.05') as e:
    runner.train_and_evaluate(tiny_config, workdir)
  assert 'seeds' not in str(e.value).split('Fields that may change')[0]


def test_a_tool_upgrade_retrains_instead_of_mixing_records(tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'w')
  tiny_config.cases = ('last:1',)
  runner.train_and_evaluate(tiny_config, workdir)
  run = case_lib.run_key('last:1', 0)
  old = json.loads((tmp_path / 'w' / 'cases' / f'{run}.json').read_text())['fingerprint']
  real = fingerprints.versions()
  monkeypatch.setattr(fingerprints, 'versions', lambda: dict(real, flax='99.0'))
  runner.train_and_evaluate(tiny_config, workdir)
  new = json.loads((tmp_path / 'w' / 'cases' / f'{run}.json').read_text())['fingerprint']
  assert new != old
  assert os.listdir(tmp_path / 'w' / 'cases' / 'discarded') == [f'{run}_{old[:12]}.json']


def test_a_run_on_another_device_kind_than_its_case_is_refused_before_training(
    tiny_config, tmp_path):
  workdir = tmp_path / 'w'
  tiny_config.cases = ('last:1',)
  runner.train_and_evaluate(tiny_config, str(workdir))
  path = workdir / 'cases' / f'{case_lib.run_key("last:1", 0)}.json'
  rec = json.loads(path.read_text())
  path.write_text(json.dumps(dict(rec, device_kind='TPU v9', data_parallel_width=1)))
  tiny_config.seeds = (0, 1)
  with pytest.raises(ValueError, match=r"case 'last:1': seed 0 trained on TPU v9 x1, this process "
                     r'would train on .*: the runs of one case must share their compiled costs'):
    runner.train_and_evaluate(tiny_config, str(workdir))
  assert not (workdir / 'cases' / f'{case_lib.run_key("last:1", 1)}.json').exists()
  assert not (workdir / 'checkpoints' / case_lib.run_key('last:1', 1)).exists()


def test_each_case_is_planned_once_and_each_seed_trains_it_with_its_own_weights(
    tiny_config, tmp_path, monkeypatch):
  built = []
  real = case_lib.make_case
  monkeypatch.setattr(case_lib, 'make_case', lambda config, case, *a, **k: built.append(
      getattr(case, 'name', case)) or real(config, case, *a, **k))
  tiny_config.cases = ('last:1', 'last:2')
  tiny_config.seeds = (0, 1)
  summary = runner.train_and_evaluate(tiny_config, str(tmp_path / 'w'))
  assert built == ['last:1', 'last:2']  # planned (compiled) once, not rebuilt per run
  by_run = {(r['case'], r['seed']): r for r in summary['runs']}
  assert by_run[('last:1', 0)]['test_loss'] != by_run[('last:1', 1)]['test_loss']


def test_pretrain_seed_counts_only_for_source_pretraining_and_old_workdirs_had_minus_one():
  new = base.get_config().to_dict()
  old = {k: v for k, v in new.items() if k != 'pretrain_seed'}  # a config.json from before it
  assert fingerprints.config_diff(old, new) == {'pretrain_seed': (-1, 0)}
  assert fingerprints.config_diff(old, dict(new, pretrain_seed=-1)) == {}
  imagenet = dict(new, pretrained='imagenet', model='efficientnet_b0')
  assert fingerprints.config_diff(dict(imagenet, pretrain_seed=3), imagenet) == {}
  assert '--config.pretrain_seed=-1 goes on in this workdir' in layout._hint(  # pylint: disable=protected-access
      fingerprints.config_diff(old, new))


def test_the_code_digest_ignores_comments_and_docstrings_not_code(tmp_path):
  def digest(name, text):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'm.py').write_text(text)
    return fingerprints.code_digest(str(tmp_path / name))
  code = '"""Doc."""\ndef f(x):\n  """Doc."""\n  return x + 1  # one\n'
  same = '"""Other doc."""\n# a comment\ndef f(x):\n  return x + 1\n'
  other = '"""Doc."""\ndef f(x):\n  """Doc."""\n  return x + 2  # one\n'
  assert digest('a', code) == digest('b', same) != digest('c', other)
  assert fingerprints.versions()['tljax_code'] == fingerprints.code_digest()
