"""A sweep's outputs in its workdir: the summary with per-case statistics, CSVs and figures."""

import time

from tljax.decision import figures
from tljax.decision import measured
from tljax.decision import recommend
from tljax.runtime import report
from tljax.sweep import layout
from tljax.sweep import search


def finish(summary, runs, failed=()):
  """Fills the summary's runs (the finished ones), failed_runs ({case, seed, reason} of runs
  that failed for good), per-case statistics against the summary's planned_cases and seeds,
  Pareto marks and, under the config's budget, the recommendation (recommend.decide); the
  statuses of cases a search did not train fully (search.mark_cases); the rank correlations of
  measured energy with the energy models (None without measurements)."""
  summary['runs'] = runs
  summary['failed_runs'] = [dict(f) for f in failed]
  recommend.decide(summary)
  search.mark_cases(summary)
  summary['energy_rank_correlations'] = measured.rank_correlations(summary['cases'])


# Between a sweep's runs the figures are redrawn at most this often (drawing both takes about
# 1.5 s on 2 CPU cores: after every run, it was 40 % of the families dry run's wall time); the
# summary and the CSVs are written after every run, and the sweep's end always draws.
FIGURES_EVERY_S = 60.0


def figures_due(drawn_at, now=None):
  """Whether figures last drawn at perf_counter() time `drawn_at` (None: never) are due."""
  now = time.perf_counter() if now is None else now
  return drawn_at is None or now - drawn_at >= FIGURES_EVERY_S


def write(workdir, summary, draw=True):
  """summary.json, results.csv (a row per case), runs.csv (a row per case and seed) and, with
  `draw`, figure.png and pareto.png."""
  report.write_json(layout.file_path(workdir, layout.SUMMARY), summary)
  report.write_csv(layout.file_path(workdir, layout.RESULTS), summary['cases'])
  report.write_csv(layout.file_path(workdir, layout.RUNS), summary['runs'])
  if not draw:
    return
  title = _title(summary)
  figures.write_figure(layout.file_path(workdir, layout.FIGURE), summary['cases'], title)
  figures.write_pareto(layout.file_path(workdir, layout.PARETO), summary['cases'], title,
                       memory=summary['config']['budget_memory'],
                       include_incomplete=summary['config'].get('include_incomplete', False),
                       energy=summary['config'].get('budget_energy', 'mac'))


def _title(summary):
  cfg = summary['config']

  def named(dataset, classes):
    return f"{dataset} {','.join(map(str, classes))}" if classes else dataset

  seeds = summary.get('seeds') or []
  return (f"{summary['name']}: {summary['model']} "
          + (f"{named(summary['source_dataset'], cfg['source_classes'])} -> "
             if summary['source_dataset'] else '')
          + named(summary['target_dataset'], cfg['target_classes'])
          + (f', {len(seeds)} seeds' if len(seeds) > 1 else '')
          + (' (dry run)' if summary['dry_run'] else ''))
