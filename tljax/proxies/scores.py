"""Every proxy's score of every case, before the cases train: the one interface to compute them.

NAMES lists the proxies, in the leaderboard's order (docs/proxies.md). Higher scores predict a
more accurate case. `case_scores` computes those of BEFORE_TRAINING from the pretrained weights
and the target's train split (the validation examples held out, never the test split);
short_training comes from the runs' records (short_training.scores).
"""

import math
import time

from absl import logging

from tljax.proxies import baselines
from tljax.proxies import estimators
from tljax.proxies import features
from tljax.proxies import gradients
from tljax.proxies import short_training
from tljax.training import case as case_lib

FEATURES = tuple(estimators.ESTIMATORS)  # logme, hscore, transrate
GRADIENTS = gradients.NAMES  # fisher, rgn, grad_norm
BASELINES = baselines.NAMES  # trainable_params, train_flops, random
NAMES = FEATURES + GRADIENTS + (short_training.NAME,) + BASELINES
BEFORE_TRAINING = tuple(n for n in NAMES if n != short_training.NAME)


def seed_config(config, seed):
  """`config` with `seed` set: the config of one seed's runs (as runner.seed_config, which
  imports this package)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.seed = int(seed)
  return c


def check_names(names):
  """`names` as a tuple; ValueError naming any that case_scores cannot compute."""
  names = tuple(names)
  bad = [n for n in names if n not in BEFORE_TRAINING]
  if bad:
    why = (' (short_training is read from the runs: short_training.scores)'
           if short_training.NAME in bad else '')
    raise ValueError(f'proxies {bad}: case_scores computes {", ".join(BEFORE_TRAINING)}{why}.')
  return names


def case_scores(sw, seed, pretrained, specs, plans, names=BEFORE_TRAINING):
  """{proxy: {case: {'score': float, 'cost_s': float}}} of the proxies `names` (of
  BEFORE_TRAINING) for the cases `specs` (freezing.CaseSpec), at `seed`'s weights.

  sw: a runner.Sweep; pretrained: the seed's pretrained variables (pretrain.variables, None
  for random weights); plans: {case name: case.Plan} holding every case of `specs`. cost_s is
  the wall time of that case's score; work shared by cases (features at one cut, the gradient)
  is charged to them in equal shares, so a proxy's cost is the sum over its cases. A score that
  cannot be computed (NaN features, no tensor with a nonzero weight) is None.
  """
  names = check_names(names)
  missing = [s.name for s in specs if s.name not in plans]
  if missing:
    raise ValueError(f'cases {missing} have no plan: case_scores needs their compiled plans.')
  if not specs:
    return {n: {} for n in names}
  rc = seed_config(sw.run_config, seed)
  chosen = {s.name: plans[s.name] for s in specs}
  variables = case_lib.with_weights(chosen[specs[0].name].case, rc, pretrained).variables
  train, _, _ = sw.splits(seed)
  out = {}
  groups = ((FEATURES, lambda ns: features.scores(rc, chosen, variables, train, seed, sw.mesh,
                                                  ns)),
            (GRADIENTS, lambda ns: gradients.scores(rc, chosen, variables, train, seed,
                                                    sw.mesh, ns)),
            (BASELINES, lambda ns: baselines.scores(rc, chosen, variables, seed, ns)))
  for group, compute in groups:
    wanted = tuple(n for n in names if n in group)
    if wanted:
      t0 = time.perf_counter()
      out.update(compute(wanted))
      logging.info('Proxies %s of %d cases: %.2f s', ', '.join(wanted), len(chosen),
                   time.perf_counter() - t0)
  return {n: _finite(n, out[n]) for n in names}


def _finite(name, by_case):
  """`by_case` with every score that is not a finite number replaced by None (logged)."""
  for case, entry in by_case.items():
    score = entry['score']
    if score is not None and not math.isfinite(score):
      logging.warning('Proxy %s of case %s is %s: no score.', name, case, score)
      entry['score'] = None
  return by_case
