"""Measured energy against the energy models: Spearman rank correlations across the cases."""

import math

from tljax.decision import pareto

MEASURED = 'measured_energy_per_example_j'
# The models the meter's ranking is compared with: {name: case field}; the energies the front
# can read (pareto.ENERGY_FIELDS), then the edge device's traffic per step.
MODELS = dict(pareto.ENERGY_FIELDS, edge_traffic='edge_traffic_bytes_per_step')
MODEL_NAMES = dict(pareto.ENERGY_NAMES, edge_traffic='edge traffic')
# Fewer cases than this give no correlation (two points always rank alike or opposite).
MIN_CASES = 3


def measured(case):
  """The case's measured energy per example (J; the mean over its measured seeds), or None."""
  return case.get(f'{MEASURED}_mean', case.get(MEASURED))


def ranks(values):
  """Ranks from 1, ties given the mean of the ranks they share (as scipy.stats.rankdata)."""
  order = sorted(range(len(values)), key=lambda i: values[i])
  out = [0.0] * len(values)
  i = 0
  while i < len(order):
    j = i
    while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
      j += 1
    for k in order[i:j + 1]:
      out[k] = (i + j) / 2 + 1
    i = j + 1
  return out


def spearman(x, y):
  """Spearman's rank correlation of two equal-length sequences: Pearson's correlation of their
  ranks (ties averaged); None when either is constant or they are shorter than MIN_CASES."""
  if len(x) != len(y):
    raise ValueError(f'spearman needs sequences of one length, got {len(x)} and {len(y)}')
  if len(x) < MIN_CASES:
    return None
  rx, ry = ranks(list(x)), ranks(list(y))
  mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
  sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
  sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
  return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def rank_correlations(cases):
  """{'n_cases', 'cases', 'spearman': {model: rho}} of the cases with a measured energy and every
  model's field (MODELS), or None when fewer than MIN_CASES have them: how well each model ranks
  the cases as the meter does (1: the same order)."""
  have = [c for c in cases if measured(c) is not None
          and all(c.get(f) is not None for f in MODELS.values())]
  if len(have) < MIN_CASES:
    return None
  meter = [measured(c) for c in have]
  return dict(n_cases=len(have), cases=[c['case'] for c in have],
              spearman={name: spearman(meter, [c[f] for c in have])
                        for name, f in MODELS.items()})


def describe(correlations):
  """One line: each model's rank correlation with the meter; '' for None."""
  if not correlations:
    return ''
  said = ', '.join(f"{MODEL_NAMES[m]} {'-' if r is None else format(r, '.2f')}"
                   for m, r in correlations['spearman'].items())
  return (f"Measured energy against the models, Spearman rank correlation over "
          f"{correlations['n_cases']} cases: {said}.")
