"""Baseline proxies that read no data: trainable parameters, train FLOPs per example, random."""

import time
import zlib

import jax
import numpy as np

NAMES = ('trainable_params', 'train_flops', 'random')
# The stream of np.random.default_rng([seed, RANDOM_STREAM, crc32(case)]) of the random proxy.
RANDOM_STREAM = 0x5EED


def trainable_params(case, params):
  """The parameters the case's optimiser updates: sizes of its trainable leaves of `params`."""
  return sum(int(np.prod(np.shape(p))) for p, t in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(case.trainable)) if t)


def random_score(case_name, seed):
  """A uniform number in [0, 1) fixed by (seed, case name): the ranking of no information."""
  return float(np.random.default_rng(
      [int(seed), RANDOM_STREAM, zlib.crc32(str(case_name).encode())]).random())


def scores(config, plans, variables, seed, names=NAMES):
  """{name: {case: {'score', 'cost_s'}}} of the baselines `names` for the cases of `plans`
  ({case: case.Plan}): more trainable parameters, more train FLOPs per example (the compiled
  step's as counted: plan.counted(), which waits for the case's counting twin where one
  compiles still) predict more accuracy; random predicts nothing."""
  fns = {'trainable_params': lambda n, p: float(trainable_params(p.case, variables['params'])),
         'train_flops': lambda n, p: float(p.counted().train_cost['flops']) / config.batch_size,
         'random': lambda n, p: random_score(n, seed)}
  out = {n: {} for n in names}
  for n in names:
    for case, plan in plans.items():
      t0 = time.perf_counter()
      score = fns[n](case, plan)
      out[n][case] = {'score': score, 'cost_s': time.perf_counter() - t0}
  return out
