"""Per-case statistics over seeds: mean, sample std and Student t 95 % interval of each metric."""

import math
import numbers

from scipy import special

from tljax import pareto

# Metrics that depend on the seed and get the full statistics (mean, std, 95 % CI, values).
STAT_FIELDS = ('test_accuracy', 'test_loss')
# Timings: they vary from run to run even when equal by chance, so always <f>_mean.
TIMINGS = ('wall_s', 'examples_per_s', 'compile_s')
# Fields that aggregate() writes itself (never copied from the runs).
_OWN = ('case', 'seed', 'status')


def t_quantile(n):
  """Student t's 0.975 quantile with n - 1 degrees of freedom (scipy's t.ppf(0.975, n - 1))."""
  if n < 2:
    raise ValueError(f'n={n}: a t interval needs at least 2 values')
  return float(special.stdtrit(n - 1, 0.975))


def describe(values):
  """(mean, std, ci95_low, ci95_high) of `values`: sample std (ddof=1) and the Student t 95 %
  interval of the mean, mean +- t(0.975, n-1) std / sqrt(n); std and CI are None for one value,
  everything None for none."""
  v = [float(x) for x in values]
  n = len(v)
  if n == 0:
    return None, None, None, None
  mean = math.fsum(v) / n
  if n == 1:
    return mean, None, None, None
  std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1))
  half = t_quantile(n) * std / math.sqrt(n)
  return mean, std, mean - half, mean + half


def _is_number(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _group(runs):
  """{case: [run, ...]} in the runs' case order, each case's runs in seed order."""
  groups = {}
  for i, r in enumerate(runs):
    if 'case' not in r or 'seed' not in r:
      raise ValueError(f'run {i} has no {"case" if "case" not in r else "seed"} field: each run '
                       'record needs "case" and "seed"')
    groups.setdefault(r['case'], []).append(r)
  for case, rs in groups.items():
    seeds = [r['seed'] for r in rs]
    if len(set(seeds)) != len(seeds):
      raise ValueError(f'case {case!r} has seeds {seeds}: each (case, seed) must appear once')
    rs.sort(key=lambda r: r['seed'])
  return groups


def _status(rs):
  bad = [r for r in rs if r.get('status', 'ok') != 'ok']
  if not bad:
    return 'ok'
  kinds = sorted({r.get('status') or 'failed' for r in bad})
  seeds = ', '.join(str(r['seed']) for r in bad)
  return f"{'/'.join(kinds)} (seed{'s' if len(bad) > 1 else ''} {seeds})"


def _stat_fields(out, rs, f):
  values = [r.get(f) for r in rs]
  mean, std, low, high = describe([v for v in values if v is not None])
  out.update({f: mean, f'{f}_mean': mean, f'{f}_std': std, f'{f}_ci95_low': low,
              f'{f}_ci95_high': high, f'{f}_values': values})


def _aggregate_case(case, rs):
  """One case's record from its runs (seed order)."""
  out = dict(case=case, seeds=[r['seed'] for r in rs], n_seeds=len(rs), status=_status(rs))
  keys = list(dict.fromkeys(k for r in rs for k in r))
  for k in keys:
    if k in _OWN:
      continue
    if k in STAT_FIELDS:
      _stat_fields(out, rs, k)
      continue
    values = [r.get(k) for r in rs]
    numeric = all(_is_number(v) for v in values)
    if all(k in r for r in rs) and all(v == values[0] for v in values) and not (
        k in TIMINGS and numeric):
      out[k] = values[0]  # a cost or a setting: the same for every seed
    elif numeric:
      out[f'{k}_mean'] = math.fsum(values) / len(values)
      if k == 'wall_s':
        out['wall_s_total'] = math.fsum(values)
    else:
      out[f'{k}_values'] = values
  for f in STAT_FIELDS:
    if f not in out:
      _stat_fields(out, rs, f)
  return out


def aggregate(runs, memory='xla'):
  """Per-case records from per-(case, seed) run records, in the runs' case order.

  Each: case, seeds, n_seeds, status ('ok' only if every seed is), the fields equal across
  seeds once, <f>_mean/_std/_ci95_low/_ci95_high/_values for STAT_FIELDS (and <f> = the mean;
  statistics over the seeds that have a value, i.e. not diverged), <f>_mean for other numbers
  that differ and for TIMINGS (wall_s also wall_s_total), <f>_values for anything else that
  differs, and
  on_pareto_front (pareto.front with `memory`).
  """
  cases = [_aggregate_case(case, rs) for case, rs in _group(list(runs)).items()]
  on_front = pareto.front(cases, memory=memory)
  for c in cases:
    c['on_pareto_front'] = c['case'] in on_front
  return cases


def is_aggregated(cases):
  """Whether `cases` already carry aggregate()'s fields."""
  return bool(cases) and all('n_seeds' in c and 'test_accuracy_mean' in c for c in cases)


def cases_of(summary, memory='xla'):
  """The summary's per-case aggregates: summary['cases'] when aggregated, else aggregate() of
  summary['runs'], or of an old one-seed summary's per-run `cases` (seed = summary['seed'])."""
  if not isinstance(summary, dict):
    raise ValueError(f'the summary is a {type(summary).__name__}, not a JSON object')
  cases = summary.get('cases')
  if isinstance(cases, list) and is_aggregated(cases):  # the front again, for this `memory`
    on_front = pareto.front(cases, memory=memory)
    return [dict(c, on_pareto_front=c['case'] in on_front) for c in cases]
  runs = summary.get('runs')
  if not runs:
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
      raise ValueError('the summary has neither "runs" nor a list of case records in "cases"')
    runs = [dict(c, seed=c.get('seed', summary.get('seed', 0))) for c in cases]
  return aggregate(runs, memory=memory)
