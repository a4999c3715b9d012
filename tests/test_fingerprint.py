"""Records carry their config: a record or checkpoint of another config or data is never reused."""

import json
import logging
import os

from configs import base
from tljax import case as case_lib
from tljax import resume
from tljax import sweep


def test_the_fingerprint_covers_every_field_that_changes_numbers_and_the_data():
  c = base.get_config()
  fp = resume.run_fingerprint(c, {})
  assert len(fp) == 64 and fp == resume.run_fingerprint(c.to_dict(), {})
  for field in resume.SAFE_FIELDS:  # these change no number
    d = c.to_dict()
    d[field] = not d[field] if isinstance(d[field], bool) else d[field] + 1 if isinstance(
        d[field], (int, float)) else d[field] + '/x'
    assert resume.run_fingerprint(d, {}) == fp, field
  for field, value in [('learning_rate', 0.01), ('seeds', (1,)), ('cases', (1,)), ('dry_run', True)]:
    d = c.to_dict()
    d[field] = value
    assert resume.run_fingerprint(d, {}) != fp, field
  assert resume.run_fingerprint(c, {'train': 'abc'}) != fp
  assert resume.run_fingerprint(c, {'train': 'abc'}) == resume.run_fingerprint(c, {'train': 'abc'})


def test_a_record_of_another_fingerprint_is_moved_aside_not_reused(tmp_path, caplog):
  resume.save_done(str(tmp_path), 4, {'case': 4, 'test_accuracy': 0.5}, 'a' * 64)
  assert resume.load_done(str(tmp_path), 4, 'a' * 64) == {'case': 4, 'test_accuracy': 0.5}
  with caplog.at_level(logging.WARNING):
    assert resume.load_done(str(tmp_path), 4, 'b' * 64) is None
  assert 'Case 4: its record was made by another config or data' in caplog.text
  assert not os.path.exists(resume.done_path(str(tmp_path), 4))
  kept = tmp_path / 'cases' / 'discarded' / f'4_{"a" * 12}.json'
  assert json.loads(kept.read_text())['test_accuracy'] == 0.5  # kept for the user, never reused
  (tmp_path / 'cases' / '5.json').write_text('{"case": 5}')  # no fingerprint: an old record
  assert resume.load_done(str(tmp_path), 5, 'a' * 64) is None


def test_checkpoints_of_another_fingerprint_are_deleted(tmp_path):
  step = tmp_path / 'checkpoints' / 'case_9' / '20'
  step.mkdir(parents=True)
  resume.discard_stale_checkpoints(str(tmp_path), 'a' * 64)  # unmarked: from an unknown run
  assert not step.exists()
  step.mkdir(parents=True)
  resume.discard_stale_checkpoints(str(tmp_path), 'a' * 64)  # marked as this run's: kept
  assert step.exists()
  resume.discard_stale_checkpoints(str(tmp_path), 'b' * 64)
  assert not step.exists()


def test_without_config_json_a_changed_config_retrains_instead_of_reusing(tiny_config, tmp_path):
  tiny_config.cases = (1,)
  first = sweep.train_and_evaluate(tiny_config, str(tmp_path))
  os.remove(tmp_path / 'config.json')  # the workdir-level check is gone; the record's remains
  tiny_config.learning_rate = 0.05
  second = sweep.train_and_evaluate(tiny_config, str(tmp_path))
  assert second['fingerprint'] != first['fingerprint']
  assert second['cases'][0]['test_loss'] != first['cases'][0]['test_loss']  # trained again
  run = case_lib.run_key('last:1', 0)
  assert os.listdir(tmp_path / 'cases' / 'discarded') == [f'{run}_{first["fingerprint"][:12]}.json']
  record = json.loads((tmp_path / 'cases' / f'{run}.json').read_text())
  assert record['fingerprint'] == second['fingerprint']
  third = sweep.train_and_evaluate(tiny_config, str(tmp_path))  # same config: the record is kept
  assert third['cases'][0] == second['cases'][0]
