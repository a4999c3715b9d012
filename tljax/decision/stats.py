"""Per-case statistics over seeds: mean, sample std and Student t 95 % interval of each metric."""

import math
import numbers

from scipy import special

from tljax.decision import pareto

# Metrics that depend on the seed and get the full statistics (mean, std, 95 % CI, values).
STAT_FIELDS = ('test_accuracy', 'test_loss')
# Timings and the energy meter's readings: they vary from run to run even when equal by chance,
# so always <f>_mean.
TIMINGS = ('wall_s', 'examples_per_s', 'compile_s', 'idle_power_w', 'measured_energy_j',
           'measured_energy_per_example_j')
# Fields that aggregate() writes itself (never copied from the runs).
_OWN = ('case', 'seed', 'status')
# Costs the compiled steps fix: the same for every seed of a case, unless its runs compiled on
# another device kind or data-parallel width (then the case has no one cost: status
# 'costs_differ').
COST_FIELDS = ('train_flops_per_step', 'energy_per_example_j', 'energy_with_memory_per_example_j',
               'train_memory_bytes', 'device_train_memory_bytes')
# A case's status, the first that applies ('ok' when none does): 'costs_differ' (its runs
# report different COST_FIELDS), 'failed' (a run failed for good, whether or not others are
# also missing: a rerun retries it), 'incomplete' (runs planned but not finished: not trained
# yet, or still running), 'diverged (seed N)' (a finished seed's loss went NaN/Inf). Only 'ok'
# cases are on the Pareto front and recommended; include_incomplete adds 'failed' and
# 'incomplete' cases with a finished run and no diverged one. status_detail says why in one line.
STATUSES = ('ok', 'costs_differ', 'failed', 'incomplete', 'diverged')
# Where a run trained: when its case's runs differ, <f>_values (never a mean).
_WHERE = ('device_kind', 'data_parallel_width')


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


def _where(r):
  """'NVIDIA H100 x1': the device kind and data-parallel width a run record trained on."""
  kind = r.get('device_kind') or 'an unrecorded device kind'
  width = r.get('data_parallel_width')
  return kind if width is None else f'{kind} x{width}'


def cost_conflict(runs):
  """None when the runs of one case report the same COST_FIELDS (where they have them), else a
  one-line message naming the first field that differs, two runs that disagree and the device
  kind and data-parallel width each trained on."""
  for f in COST_FIELDS:
    have = [r for r in runs if f in r]
    for r in have[1:]:
      if r[f] != have[0][f]:
        a = have[0]
        return (f"{f} differs between the runs of case {a['case']!r}: seed {a['seed']} "
                f"{a[f]} on {_where(a)}, seed {r['seed']} {r[f]} on {_where(r)}")
  return None


def check_same_costs(runs):
  """Raises ValueError (cost_conflict's line) when the runs of a case disagree on a cost."""
  for rs in _group(list(runs)).values():
    conflict = cost_conflict(rs)
    if conflict:
      raise ValueError(f'{conflict}: the runs of one case must share their compiled costs; '
                       'train every seed of a case on one device kind and data-parallel width.')


def check_same_device(runs, case, device_kind, data_parallel_width):
  """Before (`case`, a new seed) trains on `device_kind` x `data_parallel_width`: raises
  ValueError naming both device kinds when a finished run of `case` among `runs` trained on
  another kind or width (its compiled costs would differ); records without device_kind pass."""
  here = dict(device_kind=device_kind, data_parallel_width=data_parallel_width)
  for r in runs:
    if r.get('case') != case or r.get('device_kind') is None:
      continue
    if (r['device_kind'], r.get('data_parallel_width')) != (device_kind, data_parallel_width):
      raise ValueError(
          f"case {case!r}: seed {r['seed']} trained on {_where(r)}, this process would train "
          f'on {_where(here)}: the runs of one case must share their compiled costs; run it '
          f'on {_where(r)}, or in another workdir.')


def _seeds_text(seeds):
  return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _status(rs, missing, failed):
  """(status, status_detail) of a case: see STATUSES; detail None when ok."""
  diverged = [r['seed'] for r in rs if r.get('status', 'ok') != 'ok']
  conflict = cost_conflict(rs)
  said = [conflict] if conflict else []
  if failed:
    said.append(f'{_seeds_text(sorted(failed))} failed for good (' + '; '.join(
        f'seed {s}: {failed[s]}' for s in sorted(failed)) + ')')
  if missing:
    said.append(f'{_seeds_text(missing)} not finished (a rerun on this workdir trains them)')
  if diverged:
    said.append(f'{_seeds_text(diverged)} diverged (its loss was not finite)')
  if conflict:
    status = 'costs_differ'
  elif failed or missing:
    status = 'failed' if failed else 'incomplete'
  elif diverged:
    kinds = sorted({r.get('status') or 'failed' for r in rs if r.get('status', 'ok') != 'ok'})
    status = f"{'/'.join(kinds)} ({_seeds_text(diverged)})"
  else:
    return 'ok', None
  return status, '; '.join(said)


def _stat_fields(out, rs, f):
  values = [r.get(f) for r in rs]
  mean, std, low, high = describe([v for v in values if v is not None])
  out.update({f: mean, f'{f}_mean': mean, f'{f}_std': std, f'{f}_ci95_low': low,
              f'{f}_ci95_high': high, f'{f}_values': values})


def _aggregate_case(case, rs, planned=None, failed=None):
  """One case's record from its finished runs (seed order), the seeds `planned` (default: the
  runs') and {seed: why} of its runs that `failed` for good."""
  done = [r['seed'] for r in rs]
  failed = {s: why for s, why in (failed or {}).items() if s not in done}
  planned = sorted(set(done if planned is None else planned) | set(done) | set(failed))
  missing = [s for s in planned if s not in done and s not in failed]
  status, detail = _status(rs, missing, failed)
  out = dict(case=case, seeds=done, n_seeds=len(rs), seeds_planned=planned,
             n_seeds_planned=len(planned), seeds_missing=missing, seeds_failed=sorted(failed),
             seeds_diverged=[r['seed'] for r in rs if r.get('status', 'ok') != 'ok'],
             status=status, status_detail=detail)
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
    elif numeric and k not in _WHERE:
      out[f'{k}_mean'] = math.fsum(values) / len(values)
      if k == 'wall_s':
        out['wall_s_total'] = math.fsum(values)
    else:
      out[f'{k}_values'] = values
  for f in STAT_FIELDS:
    if f not in out:
      _stat_fields(out, rs, f)
  return out


def _plan(groups, cases, seeds, failed):
  """[(case, planned seeds or None)]: `cases` (default: the runs') in order, then any other
  case of a run or a failure, each at `seeds` (None: the seeds of its own runs)."""
  names = list(dict.fromkeys([*(cases or []), *groups, *(c for c, _ in failed)]))
  return [(c, None if seeds is None else [int(s) for s in seeds]) for c in names]


def _failures(failed):
  """{(case, seed): why} from failure records {case, seed, reason}."""
  out = {}
  for i, f in enumerate(failed or ()):
    if not isinstance(f, dict) or 'case' not in f or 'seed' not in f:
      raise ValueError(f'failed run {i} is {f!r}: a failure record needs "case" and "seed"')
    out[(f['case'], f['seed'])] = f.get('reason') or 'no reason recorded'
  return out


def aggregate(runs, memory='xla', *, cases=None, seeds=None, failed=(),
              include_incomplete=False, energy='mac'):
  """Per-case records from per-(case, seed) run records: one per case of `cases` (default: the
  runs' cases, in their order; a planned case without a finished run is kept, its metrics None)
  and of any other run.

  `seeds`: the seeds every case is planned at (default: each case's own runs'); `failed`: records
  {case, seed, reason} of runs that failed for good (the launcher's). Each case: case, seeds (the
  finished ones), n_seeds, seeds_planned, n_seeds_planned, seeds_missing, seeds_failed,
  seeds_diverged, status and status_detail (STATUSES), the fields equal across seeds once,
  <f>_mean/_std/_ci95_low/_ci95_high/_values for STAT_FIELDS (and <f> = the mean; statistics
  over the seeds that have a value, i.e. not diverged), <f>_mean for other numbers that differ
  and for TIMINGS (wall_s also wall_s_total), <f>_values for anything else that differs, and
  on_pareto_front (pareto.front with `memory`, `energy` and `include_incomplete`).
  """
  groups, fails = _group(list(runs)), _failures(failed)
  out = [_aggregate_case(case, groups.get(case, []), planned,
                         {s: why for (c, s), why in fails.items() if c == case})
         for case, planned in _plan(groups, cases, seeds, fails)]
  on_front = pareto.front(out, memory=memory, include_incomplete=include_incomplete,
                          energy=energy)
  for c in out:
    c['on_pareto_front'] = c['case'] in on_front
  return out


def is_aggregated(cases):
  """Whether `cases` already carry aggregate()'s fields."""
  return bool(cases) and all('n_seeds' in c and 'test_accuracy_mean' in c for c in cases)


def cases_of(summary, memory='xla', include_incomplete=False, energy='mac'):
  """The summary's per-case aggregates: summary['cases'] when aggregated, else aggregate() of
  summary['runs'] (with its planned cases, seeds and failed runs), or of an old one-seed
  summary's per-run `cases` (seed = summary['seed'])."""
  if not isinstance(summary, dict):
    raise ValueError(f'the summary is a {type(summary).__name__}, not a JSON object')
  cases = summary.get('cases')
  if isinstance(cases, list) and is_aggregated(cases):  # the front again, for this `memory`
    on_front = pareto.front(cases, memory=memory, include_incomplete=include_incomplete,
                            energy=energy)
    return [dict(c, on_pareto_front=c['case'] in on_front) for c in cases]
  runs = summary.get('runs')
  if not runs:
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
      raise ValueError('the summary has neither "runs" nor a list of case records in "cases"')
    runs = [dict(c, seed=c.get('seed', summary.get('seed', 0))) for c in cases]
  return aggregate(runs, memory=memory, include_incomplete=include_incomplete, energy=energy,
                   **plan_of(summary))


def plan_of(summary):
  """aggregate()'s cases, seeds and failed from a summary's planned_cases, seeds and
  failed_runs (None and () where it has none)."""
  return dict(cases=summary.get('planned_cases'),
              seeds=summary.get('seeds') if summary.get('planned_cases') else None,
              failed=summary.get('failed_runs') or ())
