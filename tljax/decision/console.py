"""What a person sees: tljax's own log lines and library warnings, then the answer as a table."""

import logging
import os

from tljax.decision import measured
from tljax.decision import pareto
from tljax.decision import recommend
from tljax.decision import stats

# Library code whose INFO lines (orbax's checkpoint chatter, TFDS) are hidden; warnings stay.
QUIET_BELOW_WARNING = (os.sep + 'site-packages' + os.sep, os.sep + 'dist-packages' + os.sep)


class _LibraryInfoFilter(logging.Filter):
  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(
        p in record.pathname for p in QUIET_BELOW_WARNING)


def _verbose():
  """Whether the user asked for absl's --verbosity >= 1 (FLAGS parsed); False otherwise."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1
  except (AttributeError, flags.Error):
    return False


def quiet_libraries():
  """Drops INFO/DEBUG records that installed libraries send through absl's logger, unless the
  user asked for --verbosity >= 1 (then they stay)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if _verbose():
    return
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


def _fmt(v, spec, scale=None):
  return '-' if v is None else format(v if scale is None else v / scale, spec)


def _accuracy(c):
  """'98.67 ± 0.52 (3)': mean test accuracy in %, the 95 % CI half-width, seeds; '(2/3)' when 2
  of the 3 planned seeds have an accuracy (the others missing, failed or diverged); '- (0/3)'
  when none has."""
  mean, low, high = c.get('test_accuracy_mean'), c.get('test_accuracy_ci95_low'), c.get(
      'test_accuracy_ci95_high')
  n = c.get('n_seeds', 1)
  planned = c.get('n_seeds_planned', n)
  counted = sum(v is not None for v in c.get('test_accuracy_values', [mean])) if n else 0
  seeds = f'({n})' if counted == n == planned else f'({counted}/{planned})'
  if mean is None:
    return f'- {seeds}'
  half = '' if low is None or high is None else f' ± {100 * (high - low) / 2:.2f}'
  return f"{100 * mean:.2f}{half} {seeds}"


def _pick(summary):
  rec = summary.get('recommendation') or {}
  return (rec.get('pick') or {}).get('case')


# The energy columns: (header, how a case gives it), left to right; the measured one only when
# a case has it.
ENERGY_COLUMNS = (('MAC energy', lambda c: pareto.energy_of(c, 'mac')),
                  ('energy with memory', lambda c: pareto.energy_of(c, 'memory')),
                  ('measured energy', measured.measured))


def _energy_columns(cases):
  """[(header with its unit, value of a case, scale)] of the ENERGY_COLUMNS to show."""
  out = []
  for name, get in ENERGY_COLUMNS:
    values = [get(c) for c in cases if get(c) is not None]
    if get is measured.measured and not values:
      continue
    scale, unit = recommend.energy_unit([abs(v) for v in values if v] or [1.0])
    out.append((f'{name} {unit}/example', get, scale))
  return out


def _row(c, pick, energies):
  status = '' if c.get('status', 'ok') == 'ok' else f": {c['status']}"
  wall = c.get('wall_s_total', c.get('wall_s'))
  return (str(c['case']) + status, _fmt(c.get('trainable_params'), ','),
          _accuracy(c), _fmt(c.get('test_loss_mean', c.get('test_loss')), '.4f'),
          *(_fmt(get(c), '.4g', scale) for _, get, scale in energies),
          _fmt(c.get('train_memory_bytes'), '.1f', 2**20),
          _fmt(c.get('device_train_memory_bytes'), '.1f', 2**20), _fmt(wall, '.1f'),
          '*' if c.get('on_pareto_front') else '',
          '<- pick' if pick is not None and c['case'] == pick else '')


def _status_lines(cases, include):
  """A line per case that is not ok (its status_detail), and which of them the front and the
  recommendation leave out."""
  bad = [c for c in cases if c.get('status', 'ok') != 'ok']
  lines = [f"{c['case']}: {c.get('status_detail') or c['status']}." for c in bad]
  if any(c['status'] in ('incomplete', 'failed') for c in bad):
    lines.append('Cases with runs missing or failed are ' + (
        'counted on the front and in the recommendation (config.include_incomplete=True).'
        if include else 'left off the front and the recommendation '
        '(config.include_incomplete=True counts them).'))
  return lines


def _search_line(summary):
  """A line for the summary's `search` (docs/search.md), or None without one."""
  info = summary.get('search')
  if not info:
    return None
  n = len(summary.get('cases') or [])
  parts = [f"answer {info['answer'] or 'none'}",
           f"{len(info['trained_fully'])} of {n} cases trained fully"]
  if info['stopped_early']:
    tied = sum(len(t) for t in (info.get('halving') or {}).get('tied') or [])
    parts.append(f"{len(info['stopped_early'])} stopped early" + (
        f' ({tied} by a difference within the cut line\'s 95 % interval)' if tied else ''))
  if info['not_selected']:
    parts.append(f"{len(info['not_selected'])} not selected")
  if info['outside_budget']:
    parts.append(f"{len(info['outside_budget'])} outside the budget, never trained")
  wall, est = info.get('wall_s'), info.get('exhaustive_estimate_s')
  if wall is not None:
    parts.append(f'{wall:.0f} s' + (
        f', an exhaustive sweep estimated at {est:.0f} s ({wall / est:.2f}x)'
        if est and info['mode'] != 'exhaustive' else ''))
  return f"Search {info['mode']}: " + '; '.join(parts) + '.'


def table(summary, figures=()):
  """The sweep's answer: one row per case (means over seeds, units in the header), '*' on the
  Pareto front, '<- pick' at the recommendation; then the recommendation's text, and the paths
  of the `figures`."""
  config = summary.get('config') or {}
  memory = config.get('budget_memory', 'xla')
  energy = config.get('budget_energy', 'mac')
  include = bool(config.get('include_incomplete', False))
  cases = stats.cases_of(summary, memory=memory, include_incomplete=include, energy=energy)
  energies = _energy_columns(cases)
  rows = [('case', 'trainable params', 'test acc % ± 95% CI (seeds)', 'test loss',
           *(header for header, _, _ in energies), 'XLA train MiB', 'device MiB',
           'wall s (all seeds)', 'Pareto', 'pick')]
  rows += [_row(c, _pick(summary), energies) for c in cases]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ['  '.join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])])
           .rstrip() for r in rows]
  lines.insert(1, '  '.join('-' * w for w in widths))
  lines.append(f"'*': on the Pareto front (mean test accuracy up, {pareto.ENERGY_NAMES[energy]} "
               f'and {memory.upper()} train memory down).')
  lines += _status_lines(cases, include)
  if measured.rank_correlations(cases):
    lines.append(measured.describe(measured.rank_correlations(cases)))
  if _search_line(summary):
    lines.append(_search_line(summary))
  if summary.get('recommendation'):
    lines += ['', recommend.format_recommendation(summary['recommendation'])]
  if (summary.get('compile') or {}).get('programs'):  # a rerun with every run kept compiles none
    lines.append(compile_line(summary['compile']))
  if figures:
    lines.append(f'Figures: {", ".join(figures)}')
  return '\n'.join(lines)


def compile_line(c):
  """One line on the sweep's compilation: the summary's `compile` field."""
  threads = f"{c['workers']} thread{'s' if c['workers'] != 1 else ''}"
  late = c.get('late_s') or 0.0
  return (f"Compiled {len(c['programs'])} programs on {threads}: {c['total_s']:.1f} s of "
          f"compiling in {c['wall_s']:.1f} s of wall time, {c['overlap_s']:.1f} s of it while "
          'the sweep trained' + (f'; {late:.1f} s of the compiling later, when records needed '
                                 'it' if late else '') + '.')
