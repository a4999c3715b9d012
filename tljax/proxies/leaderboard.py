"""The leaderboard: how well each proxy's scores rank the cases the exhaustive sweep measured.

Per proxy, over the ok cases it scored (finite scores): Kendall's tau-b and Spearman's rho
between its scores and the cases' mean test accuracy, each with a 95 % bootstrap interval
(seeds resampled within each case, the means recomputed); regret_at_1, the points of mean test
accuracy lost by training the proxy's top case instead of the best one, overall and under each
cost limit the config sets; and its cost (docs/proxies.md "The leaderboard").
"""

import numpy as np

from tljax.decision import pareto
from tljax.decision import recommend
from tljax.proxies import ranking

# The cost limits a regret is reported under, alone and together (when the config sets them).
COST_LIMITS = ('max_energy_per_example_j', 'max_train_memory_mb')


def truth(cases, include_incomplete=False):
  """{case: (mean test accuracy, [each seed's])} of the ok cases (pareto.is_ok)."""
  out = {}
  for c in cases:
    if pareto.is_ok(c, include_incomplete):
      values = [v for v in c.get('test_accuracy_values') or [] if v is not None]
      out[c['case']] = (float(pareto.accuracy(c)), values or [float(pareto.accuracy(c))])
  return out


def budgets(config, cases):
  """{label: names of the ok cases inside it} for each cost limit set in `config` (a dict),
  alone, and for all of them together when more than one is set."""
  budget = recommend.budget_of(config)
  common = dict(memory=budget['memory'], energy=budget['energy'],
                include_incomplete=budget['include_incomplete'])
  limits = [k for k in COST_LIMITS if budget[k]]
  sets = [[k] for k in limits] + ([limits] if len(limits) > 1 else [])
  return {'+'.join(s): recommend.within_budget(cases, **{k: budget[k] for k in s}, **common)
          for s in sets}


def regret_at_1(scores, accuracy, allowed=None):
  """(points lost, top cases): 100 x (the best mean accuracy among the `allowed` cases (default
  all) with a score - the mean accuracy of the proxy's top-scored of them); cases tied at the
  top score count by their mean (the expected regret of picking one at random). (None, [])
  when no allowed case has a score."""
  names = [n for n in scores if n in accuracy and (allowed is None or n in allowed)]
  if not names:
    return None, []
  top_score = max(scores[n] for n in names)
  top = [n for n in names if scores[n] == top_score]
  best = max(accuracy[n] for n in names)
  return 100 * (best - float(np.mean([accuracy[n] for n in top]))), top


def _correlations(x, means, boot):
  """(tau, tau interval, rho, rho interval) of scores `x` against the means and resamples."""
  out = []
  for fn in (ranking.kendall_tau_b, ranking.spearman_rho):
    point = ranking.finite_or_none(fn(x, means)[0])
    out += [point, None if point is None else ranking.interval(fn(x, boot))]
  return out


def training_s(summary):
  """Seconds the summary's finished runs trained (their records' wall_s, compilation excluded)."""
  return float(sum(r.get('wall_s') or 0.0 for r in summary.get('runs') or []))


def entry(name, proxy_scores, truth_, inside, times, resamples=ranking.BOOTSTRAP_RESAMPLES):
  """The leaderboard row of proxy `name`: its scores {case: {'score', 'cost_s'}} against
  `truth_` (truth()), `inside` ({budget label: case names}) and the sweep's `times` (wall_s,
  training_s)."""
  scored = {c: float(s['score']) for c, s in (proxy_scores or {}).items()
            if s.get('score') is not None and np.isfinite(s['score'])}
  names = [c for c in truth_ if c in scored]
  cost = float(sum(s.get('cost_s') or 0.0 for s in (proxy_scores or {}).values()))
  row = dict(proxy=name, missing=not proxy_scores, n_cases=len(names), kendall_tau=None,
             kendall_tau_ci95=None, spearman_rho=None, spearman_rho_ci95=None,
             regret_at_1=None, top_cases=[], regret_at_1_budget={},
             cost_s=cost if proxy_scores else None,
             **{f'cost_fraction{k}': cost / times[t] if proxy_scores and times.get(t) else None
                for k, t in (('', 'wall_s'), ('_training', 'training_s'))})
  if len(names) < 2:
    return row
  x = np.asarray([scored[c] for c in names])
  means = np.asarray([truth_[c][0] for c in names])
  boot = ranking.bootstrap_means([truth_[c][1] for c in names], resamples)
  (row['kendall_tau'], row['kendall_tau_ci95'], row['spearman_rho'],
   row['spearman_rho_ci95']) = _correlations(x, means, boot)
  accuracy = {c: truth_[c][0] for c in names}
  row['regret_at_1'], row['top_cases'] = regret_at_1(scored, accuracy)
  for label, allowed in inside.items():
    regret, top = regret_at_1(scored, accuracy, set(allowed))
    row['regret_at_1_budget'][label] = dict(regret_at_1=regret, top_cases=top,
                                            n_cases=sum(c in scored for c in allowed))
  return row


def leaderboard(summary, scores, names):
  """The rows of the proxies `names` (scores.NAMES order) for `scores` ({proxy: {case:
  {'score', 'cost_s'}}}) against the summary's cases (summary['cases'], aggregated)."""
  config = summary.get('config') or {}
  truth_ = truth(summary['cases'], bool(config.get('include_incomplete', False)))
  inside = budgets(config, summary['cases'])
  times = dict(wall_s=summary.get('wall_s'), training_s=training_s(summary))
  return [entry(n, scores.get(n), truth_, inside, times) for n in names]


def _num(v, spec='.2f'):
  return '-' if v is None else format(v, spec)


def _percent(fraction):
  return _num(None if fraction is None else 100 * fraction, '.2g')


def _with_ci(point, ci):
  if point is None:
    return '-'
  return _num(point) + ('' if ci is None else f' [{_num(ci[0])}, {_num(ci[1])}]')


def table(rows, budget_labels=()):
  """The leaderboard as aligned text: a row per proxy, its rank agreement with 95 % intervals,
  its regret (points of mean test accuracy, overall and per budget), its top case(s), cost."""
  head = (['proxy', 'Kendall tau [95% CI]', 'Spearman rho [95% CI]', 'regret@1 points']
          + [f'regret@1 {b}' for b in budget_labels]
          + ['top case', 'cost s', '% of sweep wall', '% of training'])
  body = []
  for r in rows:
    if r['missing']:
      body.append([r['proxy'], 'missing: no run recorded it'] + [''] * (len(head) - 2))
      continue
    body.append([r['proxy'], _with_ci(r['kendall_tau'], r['kendall_tau_ci95']),
                 _with_ci(r['spearman_rho'], r['spearman_rho_ci95']), _num(r['regret_at_1'])]
                + [_num(r['regret_at_1_budget'].get(b, {}).get('regret_at_1'))
                   for b in budget_labels]
                + [', '.join(r['top_cases']) or '-', _num(r['cost_s'], '.3g'),
                   _percent(r['cost_fraction']), _percent(r.get('cost_fraction_training'))])
  rows_ = [head] + body
  widths = [max(len(r[i]) for r in rows_) for i in range(len(head))]
  lines = ['  '.join(v.ljust(w) if i in (0, len(head) - 4) else v.rjust(w)
                     for i, (v, w) in enumerate(zip(r, widths))).rstrip() for r in rows_]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)
