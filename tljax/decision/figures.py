"""The figures: figure.png (accuracy, loss, energy per case) and pareto.png (accuracy vs energy)."""

import io

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from tljax.decision import pareto  # pylint: disable=g-import-not-at-top
from tljax.decision import recommend  # pylint: disable=g-import-not-at-top
from tljax.runtime import report  # pylint: disable=g-import-not-at-top

MIB = 2 ** 20


def _save(fig, path):
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  plt.close(fig)
  report.atomic_write_bytes(path, buf.getvalue())


def _mean(c, f):
  """The case's mean of field f (a one-seed record's own value); None when it has none."""
  return c.get(f'{f}_mean', c.get(f))


def _ci_err(c, f, scale):
  """(below, above) the mean of the 95 % CI, times scale; (0, 0) without a CI."""
  mean, low, high = _mean(c, f), c.get(f'{f}_ci95_low'), c.get(f'{f}_ci95_high')
  if mean is None or low is None or high is None:
    return 0.0, 0.0
  return (mean - low) * scale, (high - mean) * scale


def _seed_values(c, f):
  return [v for v in c.get(f'{f}_values', [c.get(f)]) if v is not None]


def _stat_panel(ax, cases, f, scale, color, ylabel):
  """Bars at the mean over seeds, 95 % CI error bars, each seed's value as a dot."""
  x = np.arange(len(cases))
  means = [(_mean(c, f) or 0.0) * scale for c in cases]
  err = np.array([_ci_err(c, f, scale) for c in cases]).reshape(len(cases), 2).T
  ax.bar(x, means, color=color, alpha=0.8, yerr=err, capsize=4, ecolor='black',
         label='mean, 95 % CI')
  for i, c in enumerate(cases):
    vals = _seed_values(c, f)
    if not vals:
      continue
    dx = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
    ax.scatter(i + np.asarray(dx), [v * scale for v in vals], s=12, color='black', zorder=3,
               label='each seed' if i == 0 else None)
  ax.set_ylabel(ylabel)


# The energy panel's bars: (record field, label), left to right.
ENERGY_BARS = ((pareto.ENERGY_FIELDS['mac'], 'train step (XLA FLOPs / 2 x E_mac)'),
               (pareto.ENERGY_FIELDS['memory'], 'train step with memory (+ bytes x E_byte)'),
               ('thesis_energy_per_example_j', 'thesis (trainable fwd MACs x E_mac)'))


def _energy_panel(ax, cases):
  """Energy per example (log): the compiled train step, with memory traffic, and the thesis's
  convention (the bars a case has)."""
  x = np.arange(len(cases))
  bars = [(label, [c.get(f) or 0.0 for c in cases]) for f, label in ENERGY_BARS
          if any(c.get(f) for c in cases)]
  positive = [e for _, values in bars for e in values if e > 0]
  scale, unit = recommend.energy_unit(positive or [1.0])
  w = 0.8 / max(len(bars), 1)
  for i, (label, values) in enumerate(bars):
    ax.bar(x + (i - (len(bars) - 1) / 2) * w, [e / scale for e in values], w, label=label)
  if positive:  # head-room above the bars for the legend
    ax.set_yscale('log')
    ax.set_ylim(min(positive) / scale / 3, max(positive) / scale * 1e3)
  ax.set_ylabel(f'energy per example ({unit})')
  ax.legend(fontsize=7, loc='upper left')


def _case_axis(ax, cases):
  labels = [str(c['case']) for c in cases]
  long = len(labels) > 8 or max((len(s) for s in labels), default=0) > 5
  ax.set_xticks(range(len(cases)))
  ax.set_xticklabels(labels, rotation=35 if long else 0, ha='right' if long else 'center',
                     fontsize=8 if long else 10)
  ax.set_xlabel('freeze case')


def write_figure(path, cases, title):
  """figure.png: test accuracy and loss (mean over seeds with 95 % CI, each seed a dot) and
  energy per example (log) per case; cases that are not ok are marked with their status."""
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
  _stat_panel(axes[0], cases, 'test_accuracy', 100, 'tab:blue', 'test accuracy (%)')
  axes[0].legend(fontsize=7, loc='lower left')
  _stat_panel(axes[1], cases, 'test_loss', 1, 'tab:orange', 'test loss (cross-entropy)')
  _energy_panel(axes[2], cases)
  for i, c in enumerate(cases):
    if c.get('status', 'ok') != 'ok':
      for ax in axes[:2]:
        ax.annotate(_marked(c), (i, 0), ha='center', va='bottom', color='red', rotation=90,
                    fontsize=8)
  for ax in axes:
    _case_axis(ax, cases)
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)


def _marked(c):
  """'incomplete 1/3': a case's status and, when runs are missing, its finished/planned seeds."""
  n, planned = c.get('n_seeds', 1), c.get('n_seeds_planned', c.get('n_seeds', 1))
  return (c.get('status') or '?') + (f' {n}/{planned}' if n != planned else '')


def _front_names(cases, memory, include_incomplete=False, energy='mac'):
  """The cases marked on_pareto_front, or pareto.front() when they carry no mark."""
  if cases and all('on_pareto_front' in c for c in cases):
    return {c['case'] for c in cases if c['on_pareto_front']}
  return pareto.front(cases, memory, include_incomplete, energy)


def _round_mib(m):
  """m (MiB) rounded to 2 significant digits, at least 0.1."""
  return max(float(f'{m:.2g}'), 0.1)


def _sizer(mems):
  """(size(bytes) -> marker area, reference sizes in MiB) for memory as marker area."""
  top = max(mems) if mems and all(m is not None for m in mems) else None
  if not top:
    return (lambda m: 60.0), []
  refs = sorted({_round_mib(top / MIB * f) for f in (0.1, 0.4, 1.0)})
  return (lambda m: 20.0 + 380.0 * (m or 0) / top), refs


def _plot_ok(ax, ok, front, memory, energy):
  """The ok cases: CI error bars, labels, area = memory; the front filled, the rest hollow."""
  field = pareto.memory_field(memory)
  size, refs = _sizer([c.get(field) for c in ok])
  for c in ok:
    e, acc = pareto.energy_of(c, energy), 100 * pareto.accuracy(c)
    lo, hi = _ci_err(c, 'test_accuracy', 100)
    if lo or hi:
      ax.errorbar([e], [acc], yerr=[[lo], [hi]], fmt='none', ecolor='gray', capsize=3, zorder=1)
    on = c['case'] in front
    ax.scatter([e], [acc], s=size(c.get(field)), zorder=2, alpha=0.8,
               facecolor='tab:blue' if on else 'none', edgecolor='tab:blue' if on else 'gray')
    label = str(c['case']) if c.get('status', 'ok') == 'ok' else f"{c['case']} ({_marked(c)})"
    ax.annotate(label, (e, acc), xytext=(6, 6), textcoords='offset points', fontsize=8,
                color='black' if c.get('status', 'ok') == 'ok' else 'red')
    if c.get('recommended'):
      ax.scatter([e], [acc], s=size(c.get(field)) + 250, marker='*', facecolor='none',
                 edgecolor='tab:red', linewidth=1.5, zorder=3, label='recommended')
  for r in refs:  # memory legend: reference areas
    ax.scatter([], [], s=size(r * MIB), facecolor='none', edgecolor='gray',
               label=f'{r:g} MiB {memory.upper()} train memory')


def _plot_front(ax, ok, front, energy):
  """The front as a step line: the best mean accuracy reached at each energy or less."""
  pts = sorted((pareto.energy_of(c, energy), 100 * pareto.accuracy(c))
               for c in ok if c['case'] in front)
  if pts:
    best = np.maximum.accumulate([a for _, a in pts])
    ax.plot([e for e, _ in pts], best, drawstyle='steps-post', color='tab:blue', linewidth=1,
            label='Pareto front (filled; accuracy, energy, memory)')


def _plot_failed(ax, failed, energy):
  """Cases that are not ok: a red x at their energy near the bottom of the axes, labelled;
  those without an energy (no finished run, or costs that differ) named in the corner."""
  at = ax.get_xaxis_transform()  # x in data, y in axes fraction
  for i, c in enumerate(c for c in failed if pareto.energy_of(c, energy)):
    e, y = pareto.energy_of(c, energy), 0.04 + 0.06 * i
    ax.scatter([e], [y], marker='x', color='red', transform=at,
               label='not ok (see its status)' if i == 0 else None)
    ax.annotate(f"{c['case']}: {_marked(c)}", (e, y), xycoords=at, xytext=(6, -3),
                textcoords='offset points', fontsize=7, color='red')
  unplaced = [f"{c['case']} ({_marked(c)})" for c in failed if not pareto.energy_of(c, energy)]
  if unplaced:
    ax.text(0.99, 0.01, 'not shown: ' + ', '.join(unplaced), transform=ax.transAxes,
            ha='right', va='bottom', fontsize=7, color='red')


def _energy_limits(ax, cases, energy):
  """x limits (log) around every case's energy, ok or not."""
  energies = [pareto.energy_of(c, energy) for c in cases if pareto.energy_of(c, energy)]
  if energies:
    ax.set_xlim(min(energies) / 1.25, max(energies) * 1.25)  # first: one point is no range
    ax.set_xscale('log')


def write_pareto(path, cases, title, memory='xla', include_incomplete=False, energy='mac'):
  """pareto.png: mean test accuracy (%, 95 % CI bars) against training energy per example as
  `energy` says (J, log x), one labelled point per case, marker area = `memory`'s train memory,
  the Pareto front as a step line, cases not ok (pareto.is_ok with `include_incomplete`) as red
  x, those included with runs missing labelled in red with their status, the case with
  recommended=True starred."""
  pareto.memory_field(memory)
  ok = [c for c in cases if pareto.is_ok(c, include_incomplete) and pareto.energy_of(c, energy)]
  failed = [c for c in cases if not pareto.is_ok(c, include_incomplete)]
  front = _front_names(cases, memory, include_incomplete, energy)
  fig, ax = plt.subplots(figsize=(8.5, 5.8))
  _plot_ok(ax, ok, front, memory, energy)
  _plot_front(ax, ok, front, energy)
  _plot_failed(ax, failed, energy)
  ax.margins(y=0.15)
  _energy_limits(ax, cases, energy)
  ax.set_xlabel(f'training {pareto.ENERGY_NAMES[energy]} per example (J, log scale)')
  ax.set_ylabel('test accuracy (%, mean over seeds, 95 % CI)')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7, loc='best', labelspacing=1.3, borderpad=0.9)
  ax.set_title(title)
  fig.tight_layout()
  _save(fig, path)
