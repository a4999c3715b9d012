"""A sweep's proxies in its workdir: scored once before its cases train, kept per case (a
resume reuses them), and proxies.json with the leaderboard when the sweep ends."""

import hashlib
import json
import os

from absl import logging
import jax

from tljax.proxies import features
from tljax.proxies import leaderboard
from tljax.proxies import ranking
from tljax.proxies import scores
from tljax.proxies import short_training
from tljax.runtime import report
from tljax.sweep import layout
from tljax.training import case as case_lib

FORMAT = 1  # of the cached scores: a change recomputes them


def enabled(config):
  """Whether a sweep of `config` scores its cases: config.proxies, an exhaustive sweep (a search
  trains only some cases: no ground truth to rank against), not a dry run, inline in one
  process (jobs and multi-process runs do not)."""
  return bool(config.get('proxies', False) and not config.dry_run
              and config.get('search', 'exhaustive') == 'exhaustive'
              and config.get('launcher', 'inline') == 'inline' and jax.process_count() == 1)


def key(sw, name, seed):
  """What case `name`'s scores at `seed` depend on: its run's fingerprint (config, data, case,
  seed, tool versions) and the proxies' own settings."""
  blob = dict(run=sw.fingerprints[(name, seed)], proxy_batches=sw.run_config.proxy_batches,
              proxy_examples=sw.run_config.proxy_examples, max_features=features.MAX_FEATURES,
              names=scores.BEFORE_TRAINING, format=FORMAT)
  return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _path(sw, name, seed):
  return layout.proxy_path(sw.workdir, case_lib.run_key(name, seed))


def load(sw, seed):
  """{case: its cached entry} of the sweep's cases whose scores at `seed` are on disk under
  their current key."""
  out = {}
  for s in sw.specs:
    try:
      with open(_path(sw, s.name, seed)) as f:
        entry = json.load(f)
    except (OSError, json.JSONDecodeError):
      continue
    if entry.get('key') == key(sw, s.name, seed):
      out[s.name] = entry
  return out


def missing(sw, seed):
  """The cases (specs) to score before `seed`'s runs train: at the sweep's first seed, those
  without cached scores; none when proxies are off."""
  if not enabled(sw.run_config) or seed != sw.seeds[0]:
    return []
  have = load(sw, seed)
  return [s for s in sw.specs if s.name not in have]


def compute(sw, seed, pretrained, plans, specs):
  """Scores `specs` with every proxy of scores.BEFORE_TRAINING and caches each case's."""
  logging.info('Scoring %d cases with the selection proxies before they train.', len(specs))
  got = scores.case_scores(sw, seed, pretrained, specs, plans)
  cuts = features.cut_layers({s.name: plans[s.name] for s in specs})
  for s in specs:
    path = _path(sw, s.name, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    report.write_json(path, dict(key=key(sw, s.name, seed), case=s.name, seed=seed,
                                 cut_layer=cuts[s.name],
                                 scores={p: got[p][s.name] for p in got}))


def finish(sw, summary):
  """proxies.json from the cached scores and the finished runs (None when proxies are off)."""
  if not enabled(sw.run_config):
    return None
  seed = sw.seeds[0]
  cached = load(sw, seed)
  table = {p: {c: e['scores'][p] for c, e in cached.items() if p in e['scores']}
           for p in scores.BEFORE_TRAINING}
  table[short_training.NAME] = short_training.scores(summary['runs'], seed)
  doc = document(summary, table, seed, {c: e.get('cut_layer') for c, e in cached.items()})
  report.write_json(layout.file_path(sw.workdir, layout.PROXIES), doc)
  return doc


def document(summary, table, seed, cut_layers):
  """proxies.json: the sweep, the proxies' settings, every case's scores, the leaderboard."""
  config = summary.get('config') or {}
  truth = leaderboard.truth(summary['cases'], bool(config.get('include_incomplete', False)))
  return dict(
      name=summary.get('name'), model=summary.get('model'),
      target_dataset=summary.get('target_dataset'), fingerprint=summary.get('fingerprint'),
      seed=seed, seeds=summary.get('seeds'), wall_s=summary.get('wall_s'),
      training_s=leaderboard.training_s(summary),
      settings=dict(proxy_batches=config.get('proxy_batches'),
                    proxy_examples=config.get('proxy_examples'),
                    max_features=features.MAX_FEATURES, batch_size=config.get('batch_size'),
                    validation_fraction=config.get('validation_fraction')),
      bootstrap=dict(resamples=ranking.BOOTSTRAP_RESAMPLES, seed=ranking.BOOTSTRAP_SEED),
      budgets=sorted(leaderboard.budgets(config, summary['cases'])),
      cases=[dict(case=c, test_accuracy_mean=truth[c][0] if c in truth else None,
                  n_seeds=len(truth[c][1]) if c in truth else 0, cut_layer=cut_layers.get(c))
             for c in summary.get('planned_cases') or [c['case'] for c in summary['cases']]],
      scores=table, leaderboard=leaderboard.leaderboard(summary, table, scores.NAMES))


def console(workdir, summary):
  """The leaderboard of `workdir`'s proxies.json as text for the console ('' when the run
  computed none)."""
  path = layout.file_path(workdir, layout.PROXIES)
  if not enabled_in(summary) or not os.path.exists(path):
    return ''
  with open(path) as f:
    doc = json.load(f)
  if doc.get('fingerprint') != summary.get('fingerprint'):
    return ''
  n = sum(c['test_accuracy_mean'] is not None for c in doc['cases'])
  return (f"Selection proxies, scored at seed {doc['seed']} before training, ranked against the "
          f'measured accuracy of {n} cases (mean over seeds, on the test split; 95 % bootstrap '
          f'intervals over seeds; {layout.PROXIES}):\n'
          + leaderboard.table(doc['leaderboard'], doc['budgets']))


def enabled_in(summary):
  """Whether the summary's run scored its cases (its config as enabled() reads it)."""
  config = summary.get('config') or {}
  return bool(config.get('proxies') and not summary.get('dry_run')
              and config.get('search', 'exhaustive') == 'exhaustive'
              and config.get('launcher', 'inline') == 'inline')
