"""The selection proxies' estimators against direct references, the rank statistics against
hand computations and scipy, and the leaderboard on a hand-made summary."""

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import covariance

from tljax.data import datasets
from tljax.data import inputs
from tljax.proxies import baselines
from tljax.proxies import estimators
from tljax.proxies import features
from tljax.proxies import gradients
from tljax.proxies import leaderboard
from tljax.proxies import ranking
from tljax.proxies import scores
from tljax.proxies import short_training
from tljax.runtime import parallel


def _direct_evidence(f, t, alpha, beta):
  """LogME's log evidence per example from its definition, with D x D matrices."""
  n, d = f.shape
  a = alpha * np.eye(d) + beta * f.T @ f
  m = beta * np.linalg.solve(a, f.T @ t)
  return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.linalg.slogdet(a)[1]
          - beta / 2 * np.sum((f @ m - t) ** 2) - alpha / 2 * m @ m
          - n / 2 * np.log(2 * np.pi)) / n


def _separable(n=200, d=8, seed=0):
  rng = np.random.default_rng(seed)
  f = rng.normal(size=(n, d))
  return f, (f[:, 0] > 0).astype(int), rng.normal(size=(n, d))


def test_logme_is_the_evidence_at_its_maximum():
  f, y, _ = _separable()
  u, sigma = estimators.gram_basis(f)
  t = (y == 1).astype(float)
  x2 = (u.T @ t) ** 2
  alpha, beta = estimators.logme_fixed_point(sigma, x2, t @ t - x2.sum(), len(f))
  ours = estimators.logme_evidence(sigma, x2, t @ t - x2.sum(), len(f), alpha, beta)[0]
  best = _direct_evidence(f, t, alpha, beta)
  assert ours == pytest.approx(best, rel=1e-9)
  for da, db in ((1.3, 1), (0.7, 1), (1, 1.3), (1, 0.7)):
    assert _direct_evidence(f, t, alpha * da, beta * db) < best


def test_logme_prefers_separable_features_and_ignores_dead_dimensions():
  f, y, noise = _separable()
  assert estimators.logme(f, y) > estimators.logme(noise, y) + 0.05
  # Directions without variance add nothing to the evidence (the exact log-determinant).
  padded = np.concatenate([f, np.zeros((len(f), 5))], 1)
  assert estimators.logme(padded, y) == pytest.approx(estimators.logme(f, y), rel=1e-9)


def test_hscore_closed_form_pinv_reference_and_shrinkage():
  # 1-D, two classes: cov(f) = 20/3, cov(E[f|y]) = 16/3, H = 0.8 (Bao et al., no shrinkage).
  hand = np.array([[0.], [2.], [4.], [6.]])
  assert estimators.hscore(hand, [0, 0, 1, 1], shrinkage=0) == pytest.approx(0.8)
  f, y, noise = _separable()
  g = np.zeros_like(f)
  for c in (0, 1):
    g[y == c] = f[y == c].mean(0)
  reference = np.trace(np.linalg.pinv(np.cov(f.T)) @ np.cov(g.T))
  assert estimators.hscore(f, y, shrinkage=0) == pytest.approx(reference, rel=1e-8)
  a = 0.3  # shrunk: tr(((1 - a) S + a mu I)^-1 (1 - a) S_g), covariances over N
  s_f, s_g = np.cov(f.T, bias=True), np.cov(g.T, bias=True)
  shrunk = (1 - a) * s_f + a * np.trace(s_f) / 8 * np.eye(8)
  assert estimators.hscore(f, y, shrinkage=a) == pytest.approx(
      np.trace(np.linalg.solve(shrunk, (1 - a) * s_g)), rel=1e-8)
  assert estimators.hscore(f, y, shrinkage=0) > 5 * estimators.hscore(noise, y, shrinkage=0)
  # N <= D: without shrinkage any full-rank features score K - 1; shrunk, they rank.
  rng = np.random.default_rng(3)
  y50 = np.repeat([0, 1], 25)
  wide_noise = rng.normal(size=(50, 100))
  wide = wide_noise + 3 * y50[:, None] * (np.arange(100) < 5)
  assert estimators.hscore(wide, y50, shrinkage=0) == pytest.approx(1.0)
  assert estimators.hscore(wide_noise, y50, shrinkage=0) == pytest.approx(1.0)
  assert estimators.hscore(wide, y50) > 2 * estimators.hscore(wide_noise, y50)
  lw = covariance.LedoitWolf().fit(wide)  # the regularised H-score's reference computation
  means = np.where(y50[:, None] == 1, wide[y50 == 1].mean(0), wide[y50 == 0].mean(0))
  assert estimators.hscore(wide, y50) == pytest.approx(np.trace(
      np.linalg.pinv(lw.covariance_) @ ((1 - lw.shrinkage_) * np.cov(means.T, bias=True))))


def test_transrate_is_the_official_slogdet_and_rewards_class_subspaces():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(30, 6))
  direct = 0.5 * np.linalg.slogdet(np.eye(6) + z.T @ z / (30 * 1e-4))[1]
  assert estimators.coding_rate(z) == pytest.approx(direct, rel=1e-10)
  y = np.repeat([0, 1], 100)
  apart = np.zeros((200, 4))
  apart[:100, :2] = rng.normal(size=(100, 2))  # class 0 varies in dims 0-1, class 1 in 2-3
  apart[100:, 2:] = rng.normal(size=(100, 2))
  assert estimators.transrate(apart, y) > estimators.transrate(rng.normal(size=(200, 4)), y) + 1


def test_estimators_refuse_bad_features():
  with pytest.raises(ValueError, match='NaN or Inf'):
    estimators.logme(np.array([[np.nan], [1.0]]), [0, 1])
  with pytest.raises(ValueError, match='N x D'):
    estimators.hscore(np.ones((3, 2)), [0, 1])


def test_pool_keeps_small_vectors_and_averages_large_maps():
  x = np.arange(2 * 8 * 8 * 64, dtype=np.float32).reshape(2, 8, 8, 64)
  assert features.pool(x[:, 0, 0, :]).shape == (2, 64)
  out = features.pool(x, max_dim=256)  # p = 4: a 2 x 2 grid of 64 channels
  assert out.shape == (2, 256)
  assert np.allclose(out.reshape(2, 2, 2, 64)[:, 1, 0], x[:, 4:, :4].mean((1, 2)))
  assert np.allclose(features.pool(x, max_dim=32), x.mean((1, 2)))  # 64 channels > 32: global
  odd = features.pool(np.ones((1, 5, 5, 100), np.float32), max_dim=900)  # 3 x 3 windows of 2
  assert odd.shape == (1, 900) and np.allclose(odd, 1.0)


def test_a_case_that_trains_every_layer_scores_the_input_pixels(tiny_config):
  tiny_config.batch_size = 4
  images = (np.arange(6 * 32 * 32) % 251).astype(np.uint8).reshape(6, 32, 32, 1)  # no resize
  arrays = datasets.Arrays(images, np.arange(6) % 2, 2, 'digits', 'train')
  f, y, _ = features.extract(tiny_config, None, 0, None, arrays, parallel.default())
  prep = inputs.prep_fn(tiny_config, tiny_config.target_dataset)
  assert f.shape == (6, 32 * 32) and np.array_equal(y, arrays.labels)
  assert np.allclose(f, prep(images).reshape(6, -1))


def test_tau_b_and_rho_by_hand_and_against_scipy():
  x, y = [1, 3, 2, 4], [4, 3, 2, 1]
  # 1 concordant pair (B, C), 5 discordant: tau = -4/6; d = (-3, 0, 0, 3): rho = 1 - 6*18/60.
  assert ranking.kendall_tau_b(x, y)[0] == pytest.approx(-2 / 3)
  assert ranking.spearman_rho(x, y)[0] == pytest.approx(-0.8)
  rng = np.random.default_rng(2)
  a, b = rng.integers(0, 4, 12), rng.integers(0, 5, (3, 12))  # ties in both
  for row in b:
    assert ranking.kendall_tau_b(a, row)[0] == pytest.approx(scipy_stats.kendalltau(a, row)[0])
    assert ranking.spearman_rho(a, row)[0] == pytest.approx(scipy_stats.spearmanr(a, row)[0])
  assert np.allclose(ranking.kendall_tau_b(a, b), [scipy_stats.kendalltau(a, r)[0] for r in b])
  assert np.isnan(ranking.kendall_tau_b([1, 1, 1], [1, 2, 3])[0])


def test_bootstrap_resamples_seeds_within_cases():
  means = ranking.bootstrap_means([[0.5], [0.1, 0.3]], resamples=500, seed=0)
  assert means.shape == (500, 2) and np.all(means[:, 0] == 0.5)
  assert set(np.round(means[:, 1], 6)) == {0.1, 0.2, 0.3}
  assert np.array_equal(means, ranking.bootstrap_means([[0.5], [0.1, 0.3]], 500, 0))
  assert ranking.interval([1.0, np.nan, 1.0]) == [1.0, 1.0]


def _case(name, accs, energy_uj):
  return dict(case=name, status='ok', test_accuracy_mean=float(np.mean(accs)),
              test_accuracy_values=list(accs), energy_per_example_j=energy_uj * 1e-6,
              train_memory_bytes=2**20)


def _summary(max_energy=0.0):
  cases = [_case('A', [0.9, 0.9], 4), _case('B', [0.8, 0.8], 3), _case('C', [0.7, 0.7], 2),
           _case('D', [0.5, 0.7], 1)]
  return dict(cases=cases, wall_s=100.0, seeds=[0, 1], runs=[dict(wall_s=10.0), dict(wall_s=30.0)],
              config=dict(max_energy_per_example_j=max_energy, include_incomplete=False))


def _scores(values):
  return {c: {'score': v, 'cost_s': 1.0} for c, v in zip('ABCD', values)}


def test_leaderboard_on_a_hand_made_sweep():
  table = {'logme': _scores([4, 3, 2, 1]), 'fisher': _scores([1, 3, 2, 4]),
           'random': _scores([1, 1, 1, 1])}
  rows = {r['proxy']: r for r in leaderboard.leaderboard(
      _summary(max_energy=2.5e-6), table, ('logme', 'fisher', 'random', 'short_training'))}
  perfect, reverse = rows['logme'], rows['fisher']
  assert (perfect['kendall_tau'], perfect['spearman_rho'], perfect['regret_at_1']) == (
      1.0, 1.0, 0.0)
  assert perfect['top_cases'] == ['A'] and perfect['cost_s'] == 4.0
  assert perfect['cost_fraction'] == pytest.approx(0.04)  # of the sweep's 100 s
  assert perfect['cost_fraction_training'] == pytest.approx(0.1)  # of its runs' 40 s
  # D's seeds (0.5, 0.7) resample to means 0.5, 0.6 or 0.7; C's are 0.7: the two may tie.
  assert perfect['kendall_tau_ci95'][1] == 1.0 and perfect['kendall_tau_ci95'][0] < 1.0
  assert reverse['kendall_tau'] == pytest.approx(-2 / 3)
  assert reverse['spearman_rho'] == pytest.approx(-0.8)
  assert reverse['regret_at_1'] == pytest.approx(30.0) and reverse['top_cases'] == ['D']
  # Under 2.5 uJ/example only C and D: logme picks C (best there), fisher D (0.6 vs 0.7).
  budget = 'max_energy_per_example_j'
  assert perfect['regret_at_1_budget'][budget] == dict(regret_at_1=0.0, top_cases=['C'],
                                                       n_cases=2)
  assert reverse['regret_at_1_budget'][budget]['regret_at_1'] == pytest.approx(10.0)
  # Every case tied at the top: the expected regret of a random pick among them.
  assert rows['random']['kendall_tau'] is None
  assert rows['random']['regret_at_1'] == pytest.approx(100 * (0.9 - 0.75))
  assert rows['short_training']['missing'] and rows['short_training']['kendall_tau'] is None
  text = leaderboard.table(list(rows.values()), [budget])
  assert 'regret@1 max_energy_per_example_j' in text and 'missing: no run recorded it' in text
  assert '-0.67' in text and '30.00' in text


def test_short_training_reads_records_and_never_invents():
  runs = [dict(case='A', seed=0, short_val_accuracy=0.7, short_train_s=2.0),
          dict(case='A', seed=1, short_val_accuracy=0.9), dict(case='B', seed=0)]
  assert short_training.scores(runs, 0) == {'A': {'score': 0.7, 'cost_s': 2.0}}


def test_names_baselines_and_gradient_masks():
  assert len(scores.NAMES) == len(set(scores.NAMES)) >= 10
  assert 'short_training' in scores.NAMES and 'short_training' not in scores.BEFORE_TRAINING
  with pytest.raises(ValueError, match='read from the runs'):
    scores.check_names(['logme', 'short_training'])
  assert baselines.random_score('last:1', 0) == baselines.random_score('last:1', 0)
  assert baselines.random_score('last:1', 0) != baselines.random_score('last:1', 1)
  by_case = {'A': {'score': float('nan'), 'cost_s': 1.0}, 'B': {'score': 2.0, 'cost_s': 1.0}}
  assert scores._finite('logme', by_case)['A']['score'] is None  # pylint: disable=protected-access
  sq, mean_sq, w = np.array([1., 4., 9.]), np.array([1., 4., 0.]), np.array([2., 0., 1.])
  got = gradients.case_scores(sq, mean_sq, w, [True, True, False])
  # Fisher 1 + 4; the mean gradient's norm sqrt(1 + 4); RGN over the tensors with |w| > 0: 1/2.
  assert got == {'fisher': 5.0, 'grad_norm': pytest.approx(np.sqrt(5)), 'rgn': 0.5}
