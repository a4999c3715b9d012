"""Successive halving's arithmetic: the rungs' steps, Wilson's interval and the cut.

docs/search.md "Halving" gives the rules; tljax/sweep/search.py runs the rungs.
"""

import math

from scipy import special

from tljax.training import fit

# The normal 0.975 quantile: the Wilson 95 % interval of a validation accuracy.
Z95 = 1.959963984540054


def wilson(accuracy, n, z=Z95):
  """(low, high) of the Wilson score interval of `accuracy` measured on `n` examples."""
  if n <= 0:
    return 0.0, 1.0
  centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
  return (0.0 if accuracy <= 0 else max(0.0, centre - half),
          1.0 if accuracy >= 1 else min(1.0, centre + half))


def rung_steps(total, first_fraction, eta):
  """The steps of halving's rungs below a run's `total`: K = round(log_eta(1/first_fraction))
  (at least 1) rungs at fractions first_fraction ** ((K - r) / K), r = 0..K-1, the first at
  first_fraction (fit.fraction_step), the next ~eta times longer each, up to the full run."""
  k = max(1, round(math.log(1 / first_fraction) / math.log(eta))) if first_fraction < 1 else 1
  steps = {fit.fraction_step(total, first_fraction ** ((k - r) / k)) for r in range(k)}
  return sorted(s for s in steps if s < total)


def z_of(confidence):
  """The normal quantile of a two-sided `confidence` interval (0.95: 1.96; 0: 0)."""
  return float(special.ndtri(0.5 + confidence / 2))


def cut(results, eta, z=Z95):
  """(kept, line): of {case: (accuracy, n, loss)} (accuracy None: diverged), the ceil(n/eta)
  best by accuracy (equal accuracies by lower loss), and, with z > 0, every other whose Wilson
  interval (z: z_of its confidence) reaches the line, the accuracy of the last of those (so
  every equal accuracy); `kept` in `results`' order."""
  measured = [c for c, (a, _, _) in results.items() if a is not None]
  if not measured:
    return [], None
  ranked = sorted(measured, key=lambda c: (-results[c][0], _loss(results[c][2])))
  best = ranked[:max(1, math.ceil(len(ranked) / eta))]
  line = results[best[-1]][0]
  kept = [c for c in measured if c in best or (z > 0 and wilson(*results[c][:2], z)[1] >= line)]
  return kept, line


def _loss(loss):
  return math.inf if loss is None else loss


def tied(results, kept, line, z=Z95):
  """The cases of {case: (accuracy, n, loss)} not `kept` whose Wilson interval at `z` reaches
  the cut `line`: stopped on a difference their validation split cannot tell from none."""
  return [c for c, (a, n, _) in results.items()
          if c not in kept and a is not None and line is not None and wilson(a, n, z)[1] >= line]

