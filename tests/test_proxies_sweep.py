"""A sweep scores its cases with the proxies before they train, caches them for a resume, writes
proxies.json and prints the leaderboard before its table; the command line pools workdirs."""

import json
import math
import shutil

import pytest

from tests.conftest import shrunk_default
from tljax import run
from tljax.proxies import __main__ as proxies_cli
from tljax.proxies import scores
from tljax.sweep import layout
from tljax.sweep import runner
from tljax.training import case as case_lib

CASES = ('last:1', 'last:4')  # a shallow gradient: its compile stays short


@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('proxies')
  c = shrunk_default(tmp / 'cache')
  c.pretrained = 'none'  # the proxies' path, not their quality: no pretraining to wait for
  c.cases, c.steps_per_epoch, c.proxies, c.proxy_examples = CASES, 1, True, 128
  c.validation_fraction = 0.1
  summary = runner.train_and_evaluate(c, str(tmp / 'w'))
  return c, tmp / 'w', summary


def _doc(workdir):
  return json.loads((workdir / layout.PROXIES).read_text())


def test_proxies_json_ranks_every_proxy_with_finite_scores(sweep):
  _, workdir, summary = sweep
  doc = _doc(workdir)
  assert [r['proxy'] for r in doc['leaderboard']] == list(scores.NAMES)
  ranked = [n for n in scores.BEFORE_TRAINING
            if all(math.isfinite(doc['scores'][n][c]['score']) for c in CASES)]
  assert len(ranked) >= 6, ranked
  assert all(doc['scores'][n][c]['cost_s'] >= 0 for n in scores.BEFORE_TRAINING for c in CASES)
  # The features below each case's lowest trainable layer: the input of dense_1, of dense.
  assert {c['case']: c['cut_layer'] for c in doc['cases']} == {'last:1': 'dense_1',
                                                               'last:4': 'dense'}
  params = doc['scores']['trainable_params']
  assert params['last:1']['score'] == summary['runs'][0]['trainable_params']
  assert doc['scores']['fisher']['last:4']['score'] > doc['scores']['fisher']['last:1']['score']
  short = {r['proxy']: r for r in doc['leaderboard']}['short_training']
  # Recorded by every run with a validation split (short_val_accuracy), read from the records.
  assert not short['missing']
  assert {k: v['score'] for k, v in doc['scores']['short_training'].items()} == {
      r['case']: r['short_val_accuracy'] for r in summary['runs']}
  assert doc['fingerprint'] == summary['fingerprint'] and doc['wall_s'] == summary['wall_s']
  assert sorted(p.name for p in (workdir / layout.PROXY_SCORES).iterdir()) == sorted(
      f"{case_lib.run_key(r['case'], r['seed'])}.json" for r in summary['runs'])


def test_the_outputs_page_documents_every_field_of_proxies_json(sweep):
  from docs_pages import table_names  # pylint: disable=g-import-not-at-top
  doc = _doc(sweep[1])
  assert set(table_names('docs/outputs.md', 'proxies.json')) == set(doc)
  leaderboard_row = '\n'.join(_outputs_rows('leaderboard'))
  for key in doc['leaderboard'][0]:
    assert f'`{key}`' in leaderboard_row, key


def _outputs_rows(name):
  from docs_pages import section  # pylint: disable=g-import-not-at-top
  return [l for l in section('docs/outputs.md', 'proxies.json') if l.startswith(f'| `{name}`')]


def test_a_resume_reuses_the_scores_and_the_console_ends_with_the_table(sweep, monkeypatch,
                                                                        capsys):
  c, workdir, _ = sweep
  before = _doc(workdir)['scores']

  def never(*args, **kwargs):
    raise AssertionError('a resume recomputed the proxies')

  monkeypatch.setattr(scores, 'case_scores', never)
  run.main(c, str(workdir))
  out = capsys.readouterr().out.strip().splitlines()
  assert _doc(workdir)['scores'] == before
  board = next(i for i, line in enumerate(out) if line.startswith('Selection proxies'))
  table = next(i for i, line in enumerate(out) if 'test acc' in line)
  assert board < table and out[board + 1].startswith('proxy')
  assert out[-1].startswith('Written to')


def test_the_command_line_pools_workdirs(sweep, tmp_path, capsys):
  _, workdir, _ = sweep
  other = tmp_path / 'other'
  other.mkdir()
  doc = _doc(workdir)
  doc['name'] = 'second'
  (other / layout.PROXIES).write_text(json.dumps(doc))
  assert proxies_cli.run_cli(['x', f'--workdir={workdir}', f'--workdir={other}']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('| sweep | proxy |')
  assert sum(l.startswith('| second:') for l in lines) == len(scores.NAMES)
  assert sum(l.startswith('| pooled mean') for l in lines) == len(scores.NAMES)
  shutil.rmtree(other)
  other.mkdir()
  assert proxies_cli.run_cli(['x', f'--workdir={other}']) == 1
  err = capsys.readouterr().err.strip()
  assert err == (f'tljax: error: --workdir={other} has no proxies.json: run its sweep with '
                 '--config.proxies=True (the default), not as a dry run')
