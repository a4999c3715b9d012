"""Rank agreement between scores and accuracies: Kendall's tau-b, Spearman's rho, bootstraps.

Both take one score vector and one or many accuracy vectors (resamples in rows), so that a
bootstrap of 1,000 resamples is a few array operations. A correlation that is undefined (every
score equal, or every accuracy) is NaN.
"""

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
_BLOCK = 128  # resamples per block: R x n x n signs stay small


def _rows(y):
  y = np.asarray(y, np.float64)
  return y[None] if y.ndim == 1 else y


def kendall_tau_b(x, y):
  """Kendall's tau-b of `x` (n,) against each row of `y` (n,) or (R, n): sum over pairs i < j
  of sign(x_i - x_j) sign(y_i - y_j), over sqrt(pairs untied in x x pairs untied in y)."""
  x, y = np.asarray(x, np.float64), _rows(y)
  i, j = np.triu_indices(len(x), 1)
  sx = np.sign(x[i] - x[j])
  out = []
  for start in range(0, len(y), _BLOCK):
    sy = np.sign(y[start:start + _BLOCK, i] - y[start:start + _BLOCK, j])
    den = np.sqrt(np.abs(sx).sum() * np.abs(sy).sum(1))
    with np.errstate(invalid='ignore', divide='ignore'):
      out.append(np.where(den > 0, (sx * sy).sum(1) / np.where(den > 0, den, 1), np.nan))
  return np.concatenate(out) if out else np.zeros(0)


def spearman_rho(x, y):
  """Spearman's rho of `x` (n,) against each row of `y`: the Pearson correlation of their
  ranks, ties given their average rank."""
  rx = stats.rankdata(np.asarray(x, np.float64))
  ry = stats.rankdata(_rows(y), axis=1)
  rx, ry = rx - rx.mean(), ry - ry.mean(1, keepdims=True)
  den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum(1))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(den > 0, (ry * rx).sum(1) / np.where(den > 0, den, 1), np.nan)


def bootstrap_means(values, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED):
  """(resamples, cases) means: each case's seeds (`values`, a list per case) drawn with
  replacement as many times as it has, then averaged; the draws fixed by `seed`."""
  rng = np.random.default_rng(seed)
  cols = []
  for v in values:
    v = np.asarray(v, np.float64)
    cols.append(v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(1))
  return np.stack(cols, 1) if cols else np.zeros((resamples, 0))


def interval(samples):
  """The 95 % percentile interval [2.5 %, 97.5 %] of the finite `samples`, or None."""
  s = np.asarray(samples, np.float64)
  s = s[np.isfinite(s)]
  return None if not len(s) else [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))]


def finite_or_none(v):
  v = float(v)
  return v if np.isfinite(v) else None
