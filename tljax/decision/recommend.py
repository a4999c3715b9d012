"""The recommendation: the most accurate case within an energy / memory / accuracy budget."""

import math
import numbers

from tljax.decision import pareto

MIB = 2 ** 20  # "MB" in the budget fields and flags means MiB: 2**20 bytes
LIMITS = ('max_energy_per_example_j', 'max_train_memory_mb', 'min_accuracy')
_ENERGY_UNITS = ((1.0, 'J'), (1e-3, 'mJ'), (1e-6, 'µJ'), (1e-9, 'nJ'), (1e-12, 'pJ'))
_MEMORY_NAMES = {'xla': 'XLA train memory', 'device': 'device train memory'}
# The rules that tie two cases (tie_rule): both have a 95 % interval, or one has a single seed.
OVERLAP = 'overlapping 95 % confidence intervals of the mean'
EQUAL_MEANS = 'equal mean accuracy, as one seed gives no confidence interval'


def energy_unit(joules):
  """(scale, name) of the unit that shows `joules` (a number or the largest of several) as
  1-999: 1e-6, 'µJ' for 1.1e-4 J."""
  j = max(joules) if isinstance(joules, (list, tuple)) else joules
  for scale, name in _ENERGY_UNITS:
    if j is not None and abs(j) >= scale:
      return scale, name
  return _ENERGY_UNITS[-1]


def format_energy(joules):
  """'111.4 µJ' for 1.114e-4 (J); '-' for None."""
  if joules is None:
    return '-'
  scale, name = energy_unit(joules)
  return f'{joules / scale:.4g} {name}'


def format_mib(nbytes):
  """'16.5 MiB' for 17294076 (bytes); '-' for None."""
  return '-' if nbytes is None else f'{nbytes / MIB:.1f} MiB'


def _check(name, value, hi=math.inf):
  if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= hi:
    accepted = 'a fraction in [0, 1]' if hi == 1 else 'a number >= 0'
    raise ValueError(f'{name}={value!r}: must be {accepted} (0 = no limit)')


def _entry(c, memory, energy):
  acc, energy, mem = pareto.costs(c, memory, energy)
  low, high = c.get('test_accuracy_ci95_low'), c.get('test_accuracy_ci95_high')
  return dict(case=c['case'], test_accuracy=acc, n_seeds=c.get('n_seeds', 1),
              n_seeds_planned=c.get('n_seeds_planned', c.get('n_seeds', 1)),
              status=c.get('status', 'ok'),
              ci95=None if low is None or high is None else [low, high],
              energy_per_example_j=energy, memory_bytes=mem)


def _breaks(e, budget):
  """The budget fields that entry `e` breaks."""
  out = []
  if budget['max_energy_per_example_j'] and (
      e['energy_per_example_j'] > budget['max_energy_per_example_j']):
    out.append('max_energy_per_example_j')
  if budget['max_train_memory_mb'] and e['memory_bytes'] > budget['max_train_memory_mb'] * MIB:
    out.append('max_train_memory_mb')
  if budget['min_accuracy'] and e['test_accuracy'] < budget['min_accuracy']:
    out.append('min_accuracy')
  return out


def within_budget(cases, *, max_energy_per_example_j=0, max_train_memory_mb=0, min_accuracy=0,
                  memory='xla', energy='mac', include_incomplete=False):
  """Names of the ok cases (pareto.is_ok) of `cases` inside the budget (0 = no limit; as
  recommend() counts them)."""
  budget = dict(max_energy_per_example_j=max_energy_per_example_j,
                max_train_memory_mb=max_train_memory_mb, min_accuracy=min_accuracy)
  return [e['case'] for e in (_entry(c, memory, energy) for c in cases
                              if pareto.is_ok(c, include_incomplete)) if not _breaks(e, budget)]


def tie_rule(a, b):
  """The rule that compares entries a and b: OVERLAP when both have a 95 % CI, else
  EQUAL_MEANS."""
  return EQUAL_MEANS if a['ci95'] is None or b['ci95'] is None else OVERLAP


def tied(a, b):
  """Whether entries a and b are statistically tied by tie_rule(a, b): their 95 % CIs of the
  mean overlap, or, where either has one seed (no CI), their mean accuracies are equal."""
  if tie_rule(a, b) == EQUAL_MEANS:
    return a['test_accuracy'] == b['test_accuracy']
  return a['ci95'][0] <= b['ci95'][1] and b['ci95'][0] <= a['ci95'][1]


def _cheapest(entries):
  return min(entries, key=lambda e: (e['energy_per_example_j'], e['memory_bytes']),
             default=None)


def recommend(cases, *, max_energy_per_example_j=0, max_train_memory_mb=0, min_accuracy=0,
              memory='xla', include_incomplete=False, energy='mac'):
  """The case to train within a budget (0 = no limit; memory in MiB = 2**20 bytes of
  `memory`'s field, pareto.MEMORY_FIELDS; energy in J per example of `energy`'s field,
  pareto.ENERGY_FIELDS: each entry's energy_per_example_j is that one), from aggregated cases
  (stats.aggregate); only ok cases count (pareto.is_ok: with `include_incomplete` also those
  with runs missing or failed).

  pick: the ok in-budget case of highest mean accuracy (ties: less energy, then memory);
  tied: the other in-budget cases tied with it (see tied()), cheapest (energy) first, each with
  the tie_rule that tied it; compared: the rules of every pair (pick, other in-budget case);
  next_better: the cheapest case above the pick's mean accuracy that breaks the budget, with
  accuracy_gain (fraction) and breaks (the budget fields it exceeds); when no case meets the
  budget, pick None and cheapest: the least-energy ok case with what it breaks.
  """
  _check('max_energy_per_example_j', max_energy_per_example_j)
  _check('max_train_memory_mb', max_train_memory_mb)
  _check('min_accuracy', min_accuracy, hi=1)
  pareto.memory_field(memory)
  pareto.energy_field(energy)
  budget = dict(max_energy_per_example_j=max_energy_per_example_j,
                max_train_memory_mb=max_train_memory_mb, min_accuracy=min_accuracy,
                memory=memory, energy=energy)
  ok = [_entry(c, memory, energy) for c in cases if pareto.is_ok(c, include_incomplete)]
  inside = [e for e in ok if not _breaks(e, budget)]
  rec = dict(budget=budget, include_incomplete=bool(include_incomplete), pick=None, tied=[],
             compared=[], next_better=None, cheapest=None)
  if not inside:
    rec['cheapest'] = _cheapest(ok) and dict(_cheapest(ok), breaks=_breaks(_cheapest(ok), budget))
    rec['message'] = ('No case meets the budget.' if ok else
                      'No case finished on every planned seed (see each case\'s status): '
                      'nothing to recommend.')
    return rec
  pick = min(inside, key=lambda e: (-e['test_accuracy'], e['energy_per_example_j'],
                                    e['memory_bytes']))
  rec['pick'] = pick
  others = [e for e in inside if e is not pick]
  rec['compared'] = [r for r in (OVERLAP, EQUAL_MEANS) if any(tie_rule(e, pick) == r
                                                                for e in others)]
  rec['tied'] = sorted((dict(e, tie_rule=tie_rule(e, pick)) for e in others if tied(e, pick)),
                       key=lambda e: (e['energy_per_example_j'], e['memory_bytes']))
  better = _cheapest([e for e in ok if e['test_accuracy'] > pick['test_accuracy']])
  if better is not None:
    rec['next_better'] = dict(better, accuracy_gain=better['test_accuracy'] - pick['test_accuracy'],
                              breaks=_breaks(better, budget))
  rec['message'] = f"Pick {pick['case']}."
  return rec


def _pct(fraction):
  return f'{100 * fraction:.2f} %'


def _seeds_text(e):
  """'3 seeds', '1 seed', '1 of 3 seeds' (an incomplete case, with include_incomplete)."""
  n, planned = e['n_seeds'], e.get('n_seeds_planned', e['n_seeds'])
  return f"{n} of {planned} seeds" if n != planned else f"{n} seed{'s' if n != 1 else ''}"


def _accuracy_text(e):
  if e['ci95'] is None:
    return f"{_pct(e['test_accuracy'])} ({_seeds_text(e)})"
  half = 100 * (e['ci95'][1] - e['ci95'][0]) / 2
  return f"{_pct(e['test_accuracy'])} ± {half:.2f} (95 % CI, {_seeds_text(e)})"


def _energy_words(budget):
  """'' for the MAC energy (the thesis's), ' with memory' for the energy with memory."""
  return ' with memory' if budget.get('energy', 'mac') == 'memory' else ''


def _costs_text(e, budget):
  return (f"{format_energy(e['energy_per_example_j'])}/example{_energy_words(budget)}, "
          f"{format_mib(e['memory_bytes'])} {_MEMORY_NAMES[budget['memory']]}")


def _budget_text(budget):
  parts = []
  if budget['max_energy_per_example_j']:
    parts.append(f"energy{_energy_words(budget)} <= "
                 f"{format_energy(budget['max_energy_per_example_j'])}/example")
  if budget['max_train_memory_mb']:
    parts.append(f"{_MEMORY_NAMES[budget['memory']]} <= {budget['max_train_memory_mb']:g} MiB")
  if budget['min_accuracy']:
    parts.append(f"test accuracy >= {_pct(budget['min_accuracy'])}")
  return ', '.join(parts) if parts else 'no limits'


def _breaks_text(e, budget):
  said = {'max_energy_per_example_j': lambda: (
              f"energy{_energy_words(budget)} {format_energy(e['energy_per_example_j'])}/example > "
              f"{format_energy(budget['max_energy_per_example_j'])}/example"),
          'max_train_memory_mb': lambda: (
              f"memory {format_mib(e['memory_bytes'])} > {budget['max_train_memory_mb']:g} MiB"),
          'min_accuracy': lambda: (
              f"accuracy {_pct(e['test_accuracy'])} < {_pct(budget['min_accuracy'])}")}
  return '; '.join(said[b]() for b in e['breaks'])


def format_recommendation(rec):
  """The recommendation as a few lines of text (energies with their unit, memory in MiB)."""
  budget = rec['budget']
  mib = ' (MiB = 2**20 bytes)' if budget['max_train_memory_mb'] else ''
  lines = [f'Budget: {_budget_text(budget)}{mib}.']
  pick = rec['pick']
  if pick is None:
    lines.append(rec['message'])
    c = rec.get('cheapest')
    if c:
      lines.append(f"Cheapest case: {c['case']}, {_costs_text(c, budget)}, test accuracy "
                   f"{_accuracy_text(c)}; breaks {_breaks_text(c, budget)}.")
    return '\n'.join(lines)
  lines.append(f"Recommended: {pick['case']}, test accuracy {_accuracy_text(pick)}, "
               f"{_costs_text(pick, budget)}.")
  lines += _ties_text(rec, budget)
  b = rec['next_better']
  if b is None:
    lines.append('No case is more accurate.')
  else:
    lines.append(f"More accurate, outside the budget: {b['case']}, "
                 f"+{100 * b['accuracy_gain']:.2f} points ({_pct(b['test_accuracy'])}), "
                 f"{_costs_text(b, budget)}; breaks {_breaks_text(b, budget)}.")
  return '\n'.join(lines)


def _ties_text(rec, budget):
  """The tied cases, grouped by the rule that tied each to the pick, or the rules that tied
  none; then a hint when a comparison had a one-seed case."""
  compared = rec.get('compared', [])
  lines = []
  for rule in compared:
    tied_by = [e for e in rec['tied'] if e['tie_rule'] == rule]
    if tied_by:
      lines.append(f"Statistically tied with it ({rule}), cheapest first: " + '; '.join(
          f"{e['case']} {_pct(e['test_accuracy'])} at {_costs_text(e, budget)}"
          for e in tied_by) + '.')
  if not rec['tied']:
    lines.append('No other case within the budget is tied with it (' + (
        '; '.join(compared) if compared else 'it is the only one') + ').')
  if EQUAL_MEANS in compared:
    lines.append('A case with one seed ties only at an equal mean accuracy; run more seeds for '
                 '95 % intervals.')
  return lines


def budget_of(config):
  """The budget keyword arguments of recommend() from a config (or summary['config'] dict);
  missing fields are 0 (no limit), memory 'xla', energy 'mac' and include_incomplete False."""
  get = config.get if isinstance(config, dict) else lambda k, d: getattr(config, k, d)
  return dict({k: get(k, 0) or 0 for k in LIMITS}, memory=get('budget_memory', 'xla'),
              energy=get('budget_energy', 'mac'),
              include_incomplete=bool(get('include_incomplete', False)))


def has_limits(budget):
  return any(budget[k] for k in LIMITS)


def decide(summary):
  """Fills summary['cases'] from summary['runs'] and the summary's plan (stats.aggregate with
  stats.plan_of: planned cases, seeds, failed runs; the front on the config's budget_memory,
  budget_energy and include_incomplete) and, when summary['config'] sets a budget,
  summary['recommendation'] and each case's `recommended`. Returns the summary."""
  from tljax.decision import stats  # pylint: disable=g-import-not-at-top
  budget = budget_of(summary.get('config') or {})
  summary['cases'] = stats.aggregate(summary['runs'], memory=budget['memory'],
                                     include_incomplete=budget['include_incomplete'],
                                     energy=budget['energy'], **stats.plan_of(summary))
  summary.pop('recommendation', None)
  if has_limits(budget):
    rec = recommend(summary['cases'], **budget)
    summary['recommendation'] = rec
    for c in summary['cases']:
      c['recommended'] = rec['pick'] is not None and c['case'] == rec['pick']['case']
  return summary
