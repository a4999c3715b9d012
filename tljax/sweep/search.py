"""The searches: which cases train fully (all, successive halving's finalists, a proxy's top k).

docs/search.md: the modes, halving's schedule and cut, the exhaustive estimate. The sweep
(runner.py) lends a search its training through Hooks; no mode trains a case over the budget.
"""

import dataclasses
import json
import os
import time
from typing import Callable

from absl import logging

from tljax.config import search_fields
from tljax.decision import pareto
from tljax.decision import recommend
from tljax.runtime import parallel
from tljax.runtime import report
from tljax.sweep import halving
from tljax.sweep import layout
from tljax.training import case as case_lib
from tljax.training import fit
from tljax.training import record

OUTSIDE_BUDGET, NOT_SELECTED = 'outside budget', 'not selected'


def stopped_status(rung):
  return f'stopped early (rung {rung})'


@dataclasses.dataclass
class Hooks:
  """What the sweep lends a search. pretrained(seed): the seed's starting variables; rung(spec,
  seed, pretrained, step): trains the run up to `step`, checkpointed (a case.Rung, or the run's
  record when it finished instead); run_seed(seed, names, pretrained): trains the unfinished
  runs of the cases `names` on `seed` (from pretrained(seed)), writing the summary after each;
  plan(specs): compiles cases the sweep did not (their runs had all finished) into the
  plans; record(name, seed): the finished run's record (once its counting twin has
  compiled); release(name, seed): drops what the run kept for its next part (its prefix
  cache)."""
  pretrained: Callable
  rung: Callable
  run_seed: Callable
  plan: Callable
  record: Callable
  release: Callable = lambda name, seed: None


def check(config):
  """Fails before compiling when a 'proxy:NAME' search names no proxy of tljax.proxies."""
  name = search_fields.proxy_name(config.search)
  if name is None:
    return
  names = _scores().NAMES
  if name not in names:
    raise ValueError(f'config.search={config.search!r}: no such proxy; accepted: '
                     f"{', '.join('proxy:' + n for n in names)}.")


def _scores():
  try:
    from tljax.proxies import scores  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f'a proxy search needs tljax.proxies, which this installation lacks ({e}); '
                     "use config.search='exhaustive' or 'halving'.") from None
  return scores


def outside_budget(config, plans):
  """{case: {why, costs}} of the planned cases whose compiled costs break the budget (energy as
  budget_energy says, memory as budget_memory says)."""
  energy, mib = config.max_energy_per_example_j, config.max_train_memory_mb
  if not (energy or mib):  # no budget: nothing waits for the compile pool
    return {}
  field = pareto.memory_field(config.budget_memory)
  e_field = pareto.energy_field(config.get('budget_energy', 'mac'))
  out = {}
  for name, p in plans.items():
    c = record.plan_costs(config, p)
    why = []
    if energy and c[e_field] > energy:
      why.append(f"energy {recommend.format_energy(c[e_field])}/example > "
                 f'{recommend.format_energy(energy)}/example')
    if mib and c[field] is not None and c[field] > mib * recommend.MIB:
      why.append(f'{config.budget_memory} train memory {recommend.format_mib(c[field])} > '
                 f'{mib:g} MiB')
    if why:
      out[name] = dict(why='; '.join(why), **c)
  return out


class _State:
  """search.json: each run's rung results (while its fingerprint holds) and a proxy's scores
  (while the sweep's does), so a rerun goes on where a search stopped."""

  def __init__(self, sw):
    self.sw, self.path = sw, layout.file_path(sw.workdir, layout.SEARCH)
    data = _read(self.path)
    valid = {fp for fp in sw.fingerprints.values()}
    self.rungs = {k: v for k, v in data.get('rungs', {}).items() if v.get('fingerprint') in valid}
    proxy = data.get('proxy') or {}
    self.proxy = proxy if proxy.get('fingerprint') == sw.fingerprint else None

  def rung(self, name, seed, step):
    e = self.rungs.get(case_lib.run_key(name, seed))
    if e is None or e['fingerprint'] != self.sw.fingerprints[(name, seed)]:
      return None
    return e['results'].get(str(step))

  def save_rung(self, name, seed, step, result):
    e = self.rungs.setdefault(case_lib.run_key(name, seed), dict(
        fingerprint=self.sw.fingerprints[(name, seed)], results={}))
    e['results'][str(step)] = result
    self.write()

  def write(self):
    parallel.on_writer('writing the search state', report.write_json, self.path,
                       dict(rungs=self.rungs, proxy=self.proxy))


def _read(path):
  """search.json's contents; {} when there is none or it cannot be read (it is rebuilt)."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    logging.warning('%s cannot be read (%s): the search measures its rungs again.', path, e)
    return {}


class Search:
  """One sweep's search: run() trains what config.search chooses, conclude() fills the
  summary's `search` (docs/outputs.md "The search")."""

  def __init__(self, sw, plans, summary, hooks):
    self.sw, self.plans, self.summary, self.hooks = sw, plans, summary, hooks
    self.config = sw.config
    self.state = _State(sw)
    # This process's seconds (docs/search.md "The exhaustive estimate"): in rung calls, in
    # pretraining (loading) each seed, in training the chosen cases' runs on every seed.
    self.rungs_s = self.pre_s = self.run_seeds_s = self.pre_in_run_seeds_s = 0.0
    self.done_before = {k for k, r in sw.done.items() if r is not None}
    self.last_rung = {}  # case: its last rung result (per-step times for the estimate)
    self.total = None
    out = outside_budget(self.config, plans)
    self.within = [s for s in sw.specs if s.name not in out]
    self.info = summary['search'] = dict(
        mode=self.config.search, answer=None, trained_fully=[], stopped_early={},
        not_selected=[], outside_budget=out, rungs={}, halving=None, proxy=None, wall_s=None,
        exhaustive_estimate_s=None)

  def run(self):
    """Trains the chosen cases fully on every seed, after the rungs or the scores that choose
    them."""
    if self.info['outside_budget']:
      logging.info('Outside the budget, never trained: %s.', '; '.join(
          f"{n} ({o['why']})" for n, o in self.info['outside_budget'].items()))
    mode = self.config.search
    if mode == 'halving':
      chosen = self._halving()
    elif search_fields.proxy_name(mode):
      chosen = self._proxy(search_fields.proxy_name(mode))
    else:
      chosen = [s.name for s in self.within]
    logging.info('Search %s: %d of %d cases train fully on every seed: %s.', mode, len(chosen),
                 len(self.sw.specs), ', '.join(chosen))
    for seed in self.sw.seeds:
      if mode != 'halving' or any(self.sw.done[(n, seed)] is None for n in chosen):
        self._run_seed(seed, chosen)  # (halving's last rung ran the first seed's)

  def _run_seed(self, seed, names):
    """The runs of `names` on `seed`, trained to the end (the seconds kept for the estimate)."""
    t, pre = time.perf_counter(), self.pre_s
    self.hooks.run_seed(seed, set(names), self._pretrained)
    self.run_seeds_s += time.perf_counter() - t
    self.pre_in_run_seeds_s += self.pre_s - pre

  def _pretrained(self, seed):
    t = time.perf_counter()
    out = self.hooks.pretrained(seed)
    self.pre_s += time.perf_counter() - t
    return out

  def _total(self):
    """The steps of a full run (every seed's train split has the same size)."""
    train, _, _ = self.sw.splits(self.sw.seeds[0])
    return self.sw.run_config.epochs * fit.steps_per_epoch(self.sw.run_config, train)

  def _halving(self):
    """Successive halving on the first seed (docs/search.md "Halving"): the rungs, then the full
    runs of the cases left, cut on their final validation accuracy; the finalists."""
    seed, eta = self.sw.seeds[0], self.config.halving_eta
    self.total = self._total()
    steps = halving.rung_steps(self.total, self.config.short_training_fraction, eta)
    self.info['halving'] = dict(eta=eta, confidence=self.config.halving_confidence,
                                rung_steps=steps, total_steps=self.total, lines=[], tied=[])
    alive, pretrained = [s.name for s in self.within], []
    for r, step in enumerate(steps + [self.total]):
      if len(alive) <= 1:
        break
      if step == self.total:  # the last rung: the full runs on the first seed
        self._run_seed(seed, alive)
      results, passed = {}, []
      for name in alive:
        res = (self._rung(name, seed, r, step, pretrained) if step < self.total
               else self._full(name, seed, r))
        if res is None:
          passed.append(name)  # its first-seed run has finished: it goes on unranked
        else:
          results[name] = (res['val_accuracy'], res['val_examples'], res.get('val_loss'))
      alive = self._cut(r, step, alive, results, passed)
    return alive

  def _cut(self, r, step, alive, results, passed):
    """Rung `r`'s cut of `alive` (halving.cut; ties below the last rung): the cases going on."""
    z = halving.z_of(self.config.halving_confidence) if step < self.total else 0.0
    kept, line = halving.cut(results, self.config.halving_eta, z)
    self.info['halving']['lines'].append(line)
    self.info['halving']['tied'].append(halving.tied(results, kept, line))
    for n in (n for n in alive if n not in kept + passed):
      self.info['stopped_early'][n] = r
      self.hooks.release(n, self.sw.seeds[0])  # its prefix cache
    alive = [n for n in alive if n in kept or n in passed]
    logging.info('Halving rung %d (step %d of %d): %d cases go on (cut line: validation '
                 'accuracy %s): %s.', r, step, self.total, len(alive), line, ', '.join(alive))
    return alive

  def _full(self, name, seed, r):
    """Case `name` at the last rung: its full run's final validation accuracy (None: a run
    without one, which goes on unranked)."""
    rec = self.hooks.record(name, seed)
    if rec is None:  # not finished (a run another process holds): it goes on unranked
      return None
    if rec.get('status') != 'ok':
      return self._note(name, r, dict(val_accuracy=None, val_examples=0))
    if rec.get('val_accuracy') is None:
      return None
    _, val, _ = self.sw.splits(seed)
    return self._note(name, r, dict(step=self.total, val_accuracy=rec['val_accuracy'],
                                    val_examples=len(val), val_loss=rec.get('val_loss')))

  def _rung(self, name, seed, r, step, pretrained):
    """Case `name` at rung `r` (`step`): its stored result, the first rung from a finished
    run's short_val_accuracy, None for a finished run, else trained now (and stored)."""
    res = self.state.rung(name, seed, step)
    rec = self.sw.done[(name, seed)]
    if res is None and rec is not None:
      if r > 0 or rec.get('short_val_accuracy') is None or rec.get('status') != 'ok':
        return None if rec.get('status') == 'ok' else dict(val_accuracy=None, val_examples=0)
      _, val, _ = self.sw.splits(seed)
      res = dict(step=step, val_accuracy=rec['short_val_accuracy'], val_examples=len(val),
                 val_loss=rec.get('short_val_loss'))
    if res is None:
      if not pretrained:
        pretrained.append(self._pretrained(seed))
      spec = next(s for s in self.sw.specs if s.name == name)
      t = time.perf_counter()
      out = self.hooks.rung(spec, seed, pretrained[0], step)
      call_s = time.perf_counter() - t
      self.rungs_s += call_s
      if not isinstance(out, case_lib.Rung):  # it finished (another process) or diverged
        self.done_before.add((name, seed))  # not this process's full run
        return None if out.get('status') == 'ok' else dict(val_accuracy=None, val_examples=0)
      res = dict(call_s=call_s, **{k: getattr(out, k) for k in (
          'step', 'val_accuracy', 'val_examples', 'val_loss', 'train_s', 'fill_s', 'fill_run_s')})
      self.state.save_rung(name, seed, step, res)
    if 'train_s' in res:
      self.last_rung[name] = res
    return self._note(name, r, res)

  def _note(self, name, r, res):
    """`res` (a rung's result of case `name`) into the summary's search.rungs; `res`."""
    if res['val_accuracy'] is not None:
      low, high = halving.wilson(res['val_accuracy'], res['val_examples'])
      self.info['rungs'].setdefault(name, []).append(dict(
          rung=r, step=res['step'], fraction=res['step'] / self.total,
          val_accuracy=res['val_accuracy'], val_examples=res['val_examples'],
          val_ci95=[low, high], val_loss=res.get('val_loss')))
    return res

  def _proxy(self, name):
    """The config.search_top_k cases within the budget that proxy `name` scores highest."""
    seed, k = self.sw.seeds[0], self.config.search_top_k
    names = [s.name for s in self.within]
    stored = self.state.proxy
    if not (stored and stored['name'] == name and stored['seed'] == seed
            and set(names) <= set(stored['scores'])):
      missing = [s for s in self.within if s.name not in self.plans]
      if missing:
        self.hooks.plan(missing)
      pretrained = self._pretrained(seed)
      out = _scores().case_scores(self.sw, seed, pretrained, list(self.within),
                                  {n: self.plans[n] for n in names}, [name])[name]
      stored = dict(fingerprint=self.sw.fingerprint, name=name, seed=seed,
                    scores={c: out[c]['score'] for c in names},
                    cost_s={c: out[c]['cost_s'] for c in names})
      self.state.proxy = stored
      self.state.write()
    ranked = sorted(names, key=lambda c: -stored['scores'][c])  # stable: config order on ties
    chosen = [c for c in names if c in ranked[:k]]
    self.info['proxy'] = dict(name=name, top_k=k, scores={c: stored['scores'][c] for c in names},
                              cost_s=sum(stored['cost_s'][c] for c in names))
    self.info['not_selected'] = [c for c in names if c not in chosen]
    return chosen

  def conclude(self):
    """The summary's `search` once the sweep is over: the answer, the cases trained fully,
    the wall time and the estimate of an exhaustive sweep's."""
    summary, info = self.summary, self.info
    info['trained_fully'] = [c['case'] for c in summary['cases']
                             if c.get('n_seeds') and c['n_seeds'] == c.get('n_seeds_planned')]
    budget = recommend.budget_of(self.config)
    pick = recommend.recommend(summary['cases'], **budget)['pick']
    info['answer'] = pick and pick['case']
    info['wall_s'] = summary.get('wall_s')
    info['exhaustive_estimate_s'] = self._estimate()
    return info

  def _flops_per_step(self, name):
    """The train step's FLOPs that case `name` executes (the cached suffix's when it trains on
    the prefix cache), from its plan or a record."""
    p = self.plans.get(name)
    if p is not None:
      return (p.cached.train_cost if p.cached is not None else p.train_cost)['flops']
    r = next(r for (c, _), r in self.sw.done.items() if c == name and r is not None)
    return r.get('cached_train_flops_per_step') or r['train_flops_per_step']

  def _estimate(self):
    """The exhaustive sweep's estimated wall time (docs/search.md "The exhaustive estimate")."""
    wall = self.summary.get('wall_s')
    if wall is None:
      return None
    full, run_s = {}, {}
    for (name, _), r in self.sw.done.items():
      if r is not None and r.get('wall_s') is not None:
        full.setdefault(name, []).append(r['wall_s'])
    new = {k: r['wall_s'] for k, r in self.sw.done.items()
           if r is not None and k not in self.done_before and r.get('wall_s') is not None}
    # A finalist's first-seed wall_s includes its rungs' training, spent in the rung calls.
    in_rungs = sum(r['train_s'] for n, r in self.last_rung.items() if (n, self.sw.seeds[0]) in new)
    in_runs = self.run_seeds_s - self.pre_in_run_seeds_s  # training the runs, all included
    overhead = (in_runs - sum(new.values()) + in_rungs) / len(new) if new else 0.0
    total = self.total or self._total()
    for s in self.within:
      if s.name in full:
        run_s[s.name] = sum(full[s.name]) / len(full[s.name])
      elif s.name in self.last_rung:
        r = self.last_rung[s.name]
        run_s[s.name] = r['train_s'] / r['step'] * total + r.get('fill_run_s', r['fill_s'])
    unmeasured = [s.name for s in self.within if s.name not in run_s]
    if unmeasured and run_s:  # seconds per FLOP of the measured cases, at their steps' FLOPs
      rate = sum(v / self._flops_per_step(n) for n, v in run_s.items()) / len(run_s)
      run_s.update({n: rate * self._flops_per_step(n) for n in unmeasured})
    once = wall - self.rungs_s - (self.info['proxy'] or {}).get('cost_s', 0.0) - in_runs
    return once + len(self.sw.seeds) * sum(v + overhead for v in run_s.values())

def mark_cases(summary):
  """Gives the cases a search did not train fully their status (OUTSIDE_BUDGET with the costs
  its compile gave, stopped_status(rung), NOT_SELECTED) and status_detail, off the front;
  then the recommendation again if one of them had runs (include_incomplete)."""
  info = summary.get('search')
  if not info:
    return summary
  marked = False
  for c in summary['cases']:
    name = c['case']
    if c.get('status') == 'ok':
      continue
    if name in info['outside_budget']:
      o = info['outside_budget'][name]
      c.update({k: v for k, v in o.items() if k != 'why'}, status=OUTSIDE_BUDGET,
               status_detail=f"its compiled costs break the budget ({o['why']}): never trained")
    elif name in info['stopped_early']:
      r = info['stopped_early'][name]
      last = (info['rungs'].get(name) or [{}])[-1]
      ties = info['halving'].get('tied') or []
      tied = r < len(ties) and name in ties[r]
      c.update(status=stopped_status(r), status_detail=(
          f"halving stopped it at rung {r} (step {last.get('step')}): validation accuracy "
          f"{last.get('val_accuracy')} (loss {last.get('val_loss')}) against the cut line "
          f"{info['halving']['lines'][r]}" + (
              '; within its 95 % interval: not a significant difference' if tied else '')))
    elif name in info['not_selected']:
      c.update(status=NOT_SELECTED, status_detail=(
          f"proxy {info['proxy']['name']} ranks it below the top {info['proxy']['top_k']}"))
    else:
      continue
    marked = marked or bool(c.get('n_seeds'))
    c['on_pareto_front'] = False
  if marked and summary.get('recommendation'):
    budget = recommend.budget_of(summary.get('config') or {})
    summary['recommendation'] = rec = recommend.recommend(summary['cases'], **budget)
    for c in summary['cases']:
      c['recommended'] = rec['pick'] is not None and c['case'] == rec['pick']['case']
  return summary

