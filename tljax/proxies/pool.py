"""Several sweeps' proxies.json pooled into one markdown table: per-sweep rows, pooled means."""

import math

from tljax.proxies import scores
from tljax.sweep import layout


def load(workdir):
  """The proxies.json of `workdir`; ValueError in one line when it has none."""
  path = layout.file_path(workdir, layout.PROXIES)
  doc = layout.read_output(
      workdir, layout.PROXIES, f'--workdir={workdir} has no {layout.PROXIES}: run its sweep with '
      '--config.proxies=True (the default), not as a dry run', layout.PROXIES)
  if not isinstance(doc, dict) or not isinstance(doc.get('leaderboard'), list):
    raise ValueError(f'{path} has no leaderboard: not a tljax {layout.PROXIES}')
  return doc


def _mean(values):
  v = [x for x in values if x is not None]
  return math.fsum(v) / len(v) if v else None


def pooled(docs):
  """{proxy: its means over the sweeps that rank it}: n_sweeps, kendall_tau, spearman_rho,
  regret_at_1 (points), cost_fraction, cost_fraction_training; proxies in scores.NAMES order,
  then any other."""
  rows = {}
  for doc in docs:
    for r in doc['leaderboard']:
      rows.setdefault(r['proxy'], []).append(r)
  order = [n for n in scores.NAMES if n in rows] + [n for n in rows if n not in scores.NAMES]
  out = {}
  for n in order:
    rs = [r for r in rows[n] if not r.get('missing')]
    out[n] = dict(n_sweeps=sum(r.get('kendall_tau') is not None for r in rs),
                  kendall_tau=_mean(r.get('kendall_tau') for r in rs),
                  spearman_rho=_mean(r.get('spearman_rho') for r in rs),
                  regret_at_1=_mean(r.get('regret_at_1') for r in rs),
                  cost_fraction=_mean(r.get('cost_fraction') for r in rs),
                  cost_fraction_training=_mean(r.get('cost_fraction_training') for r in rs))
  return out


def _f(v, spec='.2f'):
  return '-' if v is None else format(v, spec)


def _pct(fraction):
  return _f(None if fraction is None else 100 * fraction, '.2g')


def _ci(point, ci):
  return _f(point) + ('' if point is None or not ci else f' [{_f(ci[0])}, {_f(ci[1])}]')


def sweep_label(doc, workdir):
  seeds = doc.get('seeds') or []
  return (f"{doc.get('name')}: {doc.get('model')}, {doc.get('target_dataset')}, "
          f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({workdir})")


HEAD = ('sweep', 'proxy', 'cases', 'Kendall tau [95% CI]', 'Spearman rho [95% CI]',
        'regret@1 points', '% of sweep wall', '% of training')


def markdown(docs, workdirs):
  """The pooled table: a row per (sweep, proxy), then a row per proxy with its means over the
  sweeps (best mean Kendall tau first)."""
  lines = ['| ' + ' | '.join(HEAD) + ' |', '|' + '---|' * len(HEAD)]
  for doc, w in zip(docs, workdirs):
    for r in doc['leaderboard']:
      cells = ([r['proxy'], 'missing', '', '', '', '', ''] if r.get('missing') else [
          r['proxy'], str(r.get('n_cases', '')),
          _ci(r.get('kendall_tau'), r.get('kendall_tau_ci95')),
          _ci(r.get('spearman_rho'), r.get('spearman_rho_ci95')), _f(r.get('regret_at_1')),
          _pct(r.get('cost_fraction')), _pct(r.get('cost_fraction_training'))])
      lines.append('| ' + ' | '.join([sweep_label(doc, w)] + cells) + ' |')
  means = pooled(docs)
  ranked = sorted(means, key=lambda n: -math.inf if means[n]['kendall_tau'] is None
                  else means[n]['kendall_tau'], reverse=True)
  for n in ranked:
    m = means[n]
    lines.append('| ' + ' | '.join([
        f'pooled mean ({m["n_sweeps"]} of {len(docs)} sweeps)', n, '', _f(m['kendall_tau']),
        _f(m['spearman_rho']), _f(m['regret_at_1']),
        _pct(m['cost_fraction']), _pct(m['cost_fraction_training'])]) + ' |')
  return '\n'.join(lines)
