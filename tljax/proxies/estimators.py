"""Training-free transferability estimators of features and labels: LogME, H-score, TransRate.

Each takes features (N examples x D, any float) and integer labels (N,) and returns one float,
higher = the features predict the labels better; numpy in float64, with scikit-learn's
Ledoit-Wolf coefficient for the H-score (docs/proxies.md "Feature scores" gives the formulas and
their references).
"""

import numpy as np

# LogME's fixed point: at most this many updates, stopped when alpha/beta moves by less than
# LOGME_TOL relative (the official code's 11 and 1e-3); EPS keeps the updates finite.
LOGME_ITERATIONS = 11
LOGME_TOL = 1e-3
LOGME_EPS = 1e-5
# TransRate's distortion (the official code's default).
TRANSRATE_EPS = 1e-4
# Singular values below RANK_TOL x largest x max(N, D) are zero: the features are float32.
RANK_TOL = float(np.finfo(np.float32).eps)


def _check(features, labels):
  f = np.asarray(features, np.float64)
  y = np.asarray(labels).reshape(-1)
  if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
    raise ValueError(f'features of shape {f.shape} and labels of shape {y.shape}: need N x D '
                     'features and N labels, N >= 2')
  if not np.all(np.isfinite(f)):
    raise ValueError('the features hold NaN or Inf values')
  return f, y


def gram_basis(f):
  """(U, sigma) of the N x D matrix f = U S V^T over its nonzero singular values: U (N x k) and
  sigma = S^2 (k,), from the eigendecomposition of the smaller Gram matrix (f f^T or f^T f).
  A singular value is zero below RANK_TOL x the largest x max(N, D)."""
  n, d = f.shape
  lam, vec = np.linalg.eigh(f @ f.T if n <= d else f.T @ f)
  lam = np.clip(lam, 0.0, None)
  tol = (np.sqrt(lam.max(initial=0.0)) * max(n, d) * RANK_TOL) ** 2
  keep = lam > tol
  lam, vec = lam[keep], vec[:, keep]
  u = vec if n <= d else (f @ vec) / np.sqrt(lam)
  return u, lam


def logme_evidence(sigma, x2, res_x2, n, alpha, beta):
  """LogME's log evidence per example at (alpha, beta), in the SVD basis of the features:
  sigma = the squared nonzero singular values, x2 = (U^T y)^2 and res_x2 = |y|^2 - sum(x2).
  Returns (evidence, m2 = |m|^2, res2 = |F m - y|^2) with m the posterior mean weights."""
  t = alpha / beta
  m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
  res2 = float((x2 / (1 + sigma / t) ** 2).sum() + res_x2)
  k = len(sigma)  # log|alpha I + beta F^T F| over all D dims: the D - k zero ones cancel alpha's
  evidence = (k / 2 * np.log(alpha) + n / 2 * np.log(beta)
              - 0.5 * np.sum(np.log(alpha + beta * sigma)) - beta / 2 * res2 - alpha / 2 * m2
              - n / 2 * np.log(2 * np.pi))
  return float(evidence / n), m2, res2


def logme_fixed_point(sigma, x2, res_x2, n):
  """(alpha, beta) maximising the evidence: MacKay's fixed-point updates, as You et al. 2021's
  official code (alpha = gamma / |m|^2, beta = (N - gamma) / |F m - y|^2)."""
  alpha = beta = 1.0
  for _ in range(LOGME_ITERATIONS):
    t = alpha / beta
    gamma = float((sigma / (sigma + t)).sum())
    _, m2, res2 = logme_evidence(sigma, x2, res_x2, n, alpha, beta)
    alpha, beta = gamma / (m2 + LOGME_EPS), (n - gamma) / (res2 + LOGME_EPS)
    if abs(alpha / beta - t) / t <= LOGME_TOL:
      break
  return alpha, beta


def logme(features, labels):
  """LogME (You et al., ICML 2021): the maximum log evidence per example of a Bayesian linear
  regression from the features to each class's one-vs-rest indicator, averaged over the
  classes present in `labels`."""
  f, y = _check(features, labels)
  n = len(f)
  u, sigma = gram_basis(f)
  out = []
  for c in np.unique(y):
    t = (y == c).astype(np.float64)
    x2 = (u.T @ t) ** 2
    res_x2 = max(float(t @ t - x2.sum()), 0.0)
    alpha, beta = logme_fixed_point(sigma, x2, res_x2, n)
    out.append(logme_evidence(sigma, x2, res_x2, n, alpha, beta)[0])
  return float(np.mean(out))


def hscore(features, labels, shrinkage=None):
  """H-score (Bao et al., ICIP 2019), tr(cov(f)^-1 cov(E[f | y])), with the feature covariance
  shrunk as Ibrahim et al. (2022) do: (1 - a) cov(f) + a mu I, mu its mean variance, a the
  Ledoit-Wolf coefficient (`shrinkage` None) or `shrinkage`; 0 gives Bao et al.'s, whose
  pseudo-inverse makes every full-rank feature matrix with N <= D score K - 1. With the
  centred features f = U S V^T (k nonzero s_i), 1_c the indicator of the n_c examples of
  class c and covariances over N: sum_c (1/n_c) sum_i w_i (u_i^T 1_c)^2,
  w_i = (1 - a) s_i^2 / ((1 - a) s_i^2 + a N mu)."""
  f, y = _check(features, labels)
  f = f - f.mean(0)
  n, d = f.shape
  u, sigma = gram_basis(f)
  if not len(sigma):
    return 0.0
  if shrinkage is None:  # scikit-learn imported here: 1.3 s that runs without proxies skip
    from sklearn import covariance  # pylint: disable=g-import-not-at-top
    shrinkage = covariance.ledoit_wolf_shrinkage(f, assume_centered=True)
  a = float(shrinkage)
  mu = float(sigma.sum()) / (n * d)
  w = (1 - a) * sigma / ((1 - a) * sigma + a * n * mu)
  total = 0.0
  for c in np.unique(y):
    z = u[y == c].sum(0)
    total += float((w * z * z).sum()) / int(np.sum(y == c))
  return total


def coding_rate(z, eps=TRANSRATE_EPS):
  """TransRate's coding rate of centred features z (n x d): 1/2 log det(I + z^T z / (n eps)),
  as the official code computes it, from the eigenvalues of the smaller Gram matrix."""
  n, d = z.shape
  lam = np.clip(np.linalg.eigvalsh(z @ z.T if n <= d else z.T @ z), 0.0, None)
  return float(0.5 * np.sum(np.log1p(lam / (n * eps))))


def transrate(features, labels, eps=TRANSRATE_EPS):
  """TransRate (Huang et al., ICML 2022): R(Z) - mean over classes c of R(Z_c), Z the centred
  features, Z_c its rows of class c, R the coding rate."""
  f, y = _check(features, labels)
  z = f - f.mean(0)
  classes = np.unique(y)
  return coding_rate(z, eps) - float(np.mean([coding_rate(z[y == c], eps) for c in classes]))


ESTIMATORS = {'logme': logme, 'hscore': hscore, 'transrate': transrate}
