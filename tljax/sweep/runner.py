"""The sweep: every freeze case once per seed, resumable per (case, seed), into one summary."""

import functools
import os
import platform
import time

from absl import logging
import flax
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from tljax.accounting import meters
from tljax.config import checks
from tljax.data import inputs
from tljax.data import validation
from tljax.decision import stats
from tljax.proxies import store as proxy_store
from tljax.runtime import backend
from tljax.runtime import parallel
from tljax.runtime import report
from tljax.sweep import fingerprints
from tljax.sweep import layout
from tljax.sweep import locks
from tljax.sweep import outputs
from tljax.sweep import search
from tljax.training import case as case_lib
from tljax.training import checkpoints
from tljax.training import compile_pool
from tljax.training import compiled
from tljax.training import fit
from tljax.training import freezing
from tljax.training import prefix_cache
from tljax.training import pretrain


def train_and_evaluate(config, workdir):
  """Runs the whole experiment of `config`, writing its outputs into `workdir`.

  Checks everything that can fail before training (config values, workdir, data, cases,
  compiled memory), then trains every case once per seed. Rerun with the same workdir, it skips
  finished (case, seed) runs and resumes the interrupted one from its checkpoint. Returns the
  summary dict (also written to workdir/summary.json). The workdir is locked for the run: a
  second run on it fails. After SIGINT/SIGTERM (with interrupt.install()), it checkpoints and
  raises interrupt.Interrupted. Runs as jobs (config.launcher 'local' or 'slurm') go through
  tljax.run.train_and_evaluate, which chooses.
  """
  checks.validate(config)
  if config.get('launcher', 'inline') != 'inline':
    raise ValueError(f'config.launcher={config.launcher!r}: the inline sweep runs every run in '
                     'this process; call tljax.run.train_and_evaluate, which submits jobs.')
  parallel.maybe_initialize(config)  # before anything touches a JAX backend
  with locks.held(workdir, config.process_id):
    parallel.check_interrupt('before starting')
    return _train_and_evaluate(config, workdir)


def convert_imagenet(config):
  """Keras's ImageNet weights of config.model, downloaded and converted into the cache once:
  by process 0 alone in a multi-process run (the others wait at a barrier, then read them)."""
  from tljax.models import imagenet  # pylint: disable=g-import-not-at-top  # h5py, only here
  parallel.on_writer('converting the ImageNet weights', functools.partial(
      imagenet.ensure_converted, **imagenet.config_fields(config)), config.model,
                     config.cache_dir)


def seed_config(config, seed):
  """The config of one seed's runs (compiled.with_seed)."""
  return compiled.with_seed(config, seed)


def dry_run_config(config):
  """One step per case on mock data with random weights; batches and accounting unchanged
  (the mock splits hold at least a train and an eval batch)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.epochs = 1
    c.steps_per_epoch = 1
  return c


class Sweep:
  """The state of one sweep between its phases.

  prepare=False (a launcher's job, tljax.cluster) leaves the workdir as the launching process
  prepared it: no config/data check files written, no stale checkpoints removed.
  """

  def __init__(self, config, workdir, prepare=True):
    self.config, self.workdir = config, workdir
    backend.use_compilation_cache(config)  # before the first compile
    self.run_config = dry_run_config(config) if config.dry_run else config
    self.mesh = parallel.Mesh.for_config(config)
    self.mesh.check_batch('batch_size', self.run_config.batch_size)
    self.identity = inputs.data_identity(self.run_config)
    if prepare:  # process 0 alone writes (docs/clusters.md "Several processes (multi-host)")
      parallel.on_writer('checking the workdir', _check_workdir, workdir, config, self.identity)
    self.target = inputs.load(self.run_config, 'target', 'train')
    self.target_test = inputs.load(self.run_config, 'target', 'test')
    checks.check_data(self.run_config, self.target)
    if prepare and config.pretrained == 'imagenet' and not config.dry_run:
      convert_imagenet(config)  # offline: fails before compiling
    # What makes the numbers: the sweep's config fingerprint (every run shares it), and each
    # (case, seed) run's own, which decides whether its record or checkpoints are reused.
    self.fingerprint = fingerprints.run_fingerprint(config, data_identity=self.identity)
    self.num_classes = self.target.num_classes
    model = compiled.model_for(self.run_config, self.num_classes)
    checks.validate_cases(self.run_config, model.keras_layers())  # before hours go into the first
    params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            compiled.input_spec(self.run_config, 1))['params']
    self.specs = [freezing.case_spec(c, model.keras_layers(), config.case_counting, params=params)
                  for c in config.cases]
    self.seeds = [int(s) for s in config.seeds]
    self.fingerprints = {(s.name, seed): fingerprints.run_fingerprint(config, self.identity, s, seed)
                         for seed in self.seeds for s in self.specs}
    parallel.on_writer('discarding stale records', self._load_done)  # moves them away
    self.done = self._load_done()
    self.later = []  # (key, plan, record function): runs waiting for their counted FLOPs
    self.drawn_at = None  # when _publish last drew the figures (outputs.figures_due)
    self.kept = prefix_cache.Kept()  # prefix caches of runs paused at a search's rung
    self.paused = checkpoints.Paused(prefix_cache.memory_budget)  # and their train states
    parallel.same_on_all('finished runs', sorted(k for k, r in self.done.items() if r))

  def _load_done(self):
    return {key: self.load(key) for key in self.fingerprints}

  def load(self, key):
    """The finished record of run `key` (case name, seed) on disk, or None."""
    return layout.load_done(self.workdir, case_lib.run_key(*key), self.fingerprints[key])

  def plan_line(self):
    """What this sweep reuses and what it trains, in one line."""
    kept = sum(r is not None for r in self.done.values())
    todo = len(self.done) - kept
    return (f'{len(self.specs)} cases x {len(self.seeds)} seeds: {kept} run'
            f'{"s" if kept != 1 else ""} kept, {todo} to train.')

  def check_device(self, name, seed):
    """Refuses to train (case `name`, `seed`) on another device kind or data-parallel width than
    its case's finished runs: a case's runs must share their compiled costs."""
    del seed  # the new run's: any finished run of the case is compared
    stats.check_same_device([r for r in self.done.values() if r is not None], name,
                            str(self.mesh.devices[0].device_kind), self.mesh.num_devices)

  def splits(self, seed):
    """(train, validation, test) of `seed`'s runs: validation (None when
    config.validation_fraction is 0) is held out of the target's train split by the seed."""
    train, val = validation.split(self.target, self.run_config.validation_fraction, seed)
    return train, val, self.target_test

  def todo(self, seed):
    return [s for s in self.specs if self.done[(s.name, seed)] is None]

  def facts(self):
    """What the summary says about the data and the runs, beside the records (JSON-able)."""
    train, val, _ = self.splits(self.seeds[0])
    return dict(num_classes=self.num_classes, train_examples=len(train),
                validation_examples=0 if val is None else len(val),
                test_examples=len(self.target_test), data=self.identity,
                fingerprint=self.fingerprint, cases=[s.name for s in self.specs],
                seeds=self.seeds, run_fingerprints={
                    case_lib.run_key(*k): fp for k, fp in self.fingerprints.items()})

  def filter_metrics(self):
    """Cuts the metrics of unfinished runs back to their checkpoint (they write the rest again);
    finished runs' lines, and those of runs this sweep does not plan, are kept."""
    redo = [case_lib.run_key(*k) for k, r in self.done.items() if r is None]
    redo += [pretrain.run_key(seed_config(self.run_config, s)) for s in self.seeds
             if not pretrain.is_cached(seed_config(self.run_config, s), self.identity)]
    resumable = {}
    for k in redo:
      d = layout.case_dir(self.workdir, k)
      if os.path.isdir(d):
        ckpt = checkpoints.Checkpoints(d)  # collective with several processes
        step = ckpt.latest_step()
        ckpt.close()
        if step is not None:
          resumable[k] = step
    parallel.on_writer('filtering the metrics', layout.filter_metrics, self.metrics_path,
                       set(redo), resumable)

  @property
  def metrics_path(self):
    return layout.file_path(self.workdir, layout.METRICS)


def _train_and_evaluate(config, workdir):
  sw = Sweep(config, workdir)
  search.check(config)  # a proxy search's proxy, before compiling
  logging.info('%s', sw.plan_line())
  if any(r is None for r in sw.done.values()):  # the idle power, before anything trains
    meters.get(sw.run_config)  # (config.energy_meter; None when off)
  for key in [k for k, r in sw.done.items() if r is None]:
    sw.check_device(*key)  # before any pretraining or compiling
  sw.filter_metrics()
  metrics = report.MetricsWriter(sw.metrics_path if parallel.is_writer() else None)
  plans = None
  try:
    t0 = time.perf_counter()
    plans = _plan(sw)
    summary = new_summary(config, sw.facts(), None)
    s = search.Search(sw, plans, summary, _hooks(sw, plans, metrics, summary, t0))
    s.run()
    save_later(sw, wait=True)  # the records whose counting twins compiled last
    summary.update(compile=plans.report(), eval_compile_s=max(  # (a stopped case's LATE parts
        (p.eval_compile_s for p in plans.values() if p.counting is None), default=None))  # never ran)
    outputs.finish(summary, _runs(sw))
    summary['wall_s'] = time.perf_counter() - t0
    s.conclude()
    parallel.on_writer('writing the summary', outputs.write, workdir, summary)
    proxy_store.finish(sw, summary)  # proxies.json: the proxies against the finished sweep
  finally:
    sw.kept.release()
    sw.paused.release()  # their saves finish on disk: a rerun goes on from them
    if plans is not None:
      plans.close()  # no compiling thread outlives the sweep
    metrics.close()
  return summary


def _plan(sw):
  """Every case that has a seed to run, compiled once (before any pretraining or training)."""
  needed = [s for s in sw.specs if any(sw.done[(s.name, seed)] is None for seed in sw.seeds)]
  return plan_cases(sw, needed, sw.seeds[0])


def plan_cases(sw, specs, seed):
  """{name: case.Plan} of `specs` compiled at `seed`'s config by the compile pool (a
  compile_pool.Plans: close it), their memory checked."""
  rc = seed_config(sw.run_config, seed)
  eval_batch = fit.eval_batch(rc, sw.target_test, sw.mesh)
  train = sw.splits(seed)[0]  # what the prefix cache's cost model plans for
  return compile_pool.plan_cases(rc, specs, sw.num_classes, eval_batch, sw.mesh, train=train)


def _hooks(sw, plans, metrics, summary, t0):
  """What a search (tljax/sweep/search.py) trains with: this sweep's runs and outputs."""
  loaded = {}  # source seed: (variables, info), loaded once for the seeds that share them

  def pretrained(seed):  # the seed's starting variables
    k = pretrain.source_seed(sw.run_config, seed)
    if k not in loaded:
      loaded[k] = _pretrained(sw, seed, metrics)
    summary['pretraining'][str(seed)] = loaded[k][1]
    return loaded[k][0]

  return search.Hooks(
      pretrained=pretrained,
      rung=lambda spec, seed, pre, step: train_run(sw, plans[spec.name], spec, seed, pre,
                                                   metrics, stop_at_step=step),
      run_seed=lambda seed, names, pre: _run_seed(sw, seed, plans, metrics, summary, t0, names,
                                                  pre),
      plan=lambda specs: plans.merge(plan_cases(sw, specs, sw.seeds[0])),
      record=lambda name, seed: (save_later(sw, wait=True), sw.done[(name, seed)])[1],
      release=lambda name, seed: _release(sw, case_lib.run_key(name, seed)))


def _release(sw, run):
  """Drops what paused run `run` kept for its next part: its prefix cache and train state."""
  sw.kept.release(run)
  sw.paused.release(run)


def _pretrained(sw, seed, metrics):
  """(variables, info): the pretraining the runs of `seed` start from (cached), under its lock."""
  rc = seed_config(sw.run_config, seed)
  with locks.run_lock(sw.workdir, pretrain.run_key(rc), sw.config.process_id):
    return pretrain.variables(rc, metrics, sw.workdir, sw.identity, sw.mesh)


def _run_seed(sw, seed, plans, metrics, summary, t0, names, pretrained_of):
  """The pretrained variables of this seed (pretrained_of(seed)), then its unfinished cases of
  `names`."""
  chosen = [s for s in sw.specs if s.name in names]
  pretrained = None
  unscored = proxy_store.missing(sw, seed)  # the first seed's cases without proxy scores
  if any(sw.done[(s.name, seed)] is None for s in chosen) or unscored:
    pretrained = pretrained_of(seed)
  if unscored:
    _score(sw, seed, pretrained, plans, unscored)
  for spec in chosen:
    key = (spec.name, seed)
    if sw.done[key] is None:
      train_run(sw, plans[spec.name], spec, seed, pretrained, metrics,
                defer=not parallel.multi_process())
    else:
      logging.info('Case %s, seed %d finished in an earlier run: kept.', *key)
    save_later(sw)
    _publish(sw, summary, t0)


def _publish(sw, summary, t0):
  """The summary of the runs finished so far, written."""
  outputs.finish(summary, _runs(sw))
  summary['wall_s'] = time.perf_counter() - t0
  draw = outputs.figures_due(sw.drawn_at)
  sw.drawn_at = time.perf_counter() if draw else sw.drawn_at
  parallel.on_writer('writing the summary', outputs.write, sw.workdir, summary, draw)


def _score(sw, seed, pretrained, plans, specs):
  """The selection proxies of `specs` before they train (tljax.proxies); a case whose runs
  had all finished is planned here first."""
  unplanned = [s for s in specs if s.name not in plans]
  if unplanned:
    plans.merge(plan_cases(sw, unplanned, seed))
  proxy_store.compute(sw, seed, pretrained, plans, specs)


def _check_workdir(workdir, config, identity):
  """The workdir is writable, holds no other config's or data's run (resume)."""
  layout.prepare_workdir(workdir, config)
  layout.check_data(workdir, identity)


def train_run(sw, plan, spec, seed, pretrained, metrics, defer=False, stop_at_step=None):
  """Trains (case `spec`, `seed`) from `pretrained` with its compiled `plan`, holding the run's
  lock (an inline sweep and jobs alike); saves and returns its record. A run that another
  process finished while this one waited for its lock is not trained again. With `defer`, a
  run whose counting twin compiles still is saved later (save_later): None. With
  `stop_at_step` (a search's rung) the run pauses there, checkpointed, and returns the
  case.Rung instead of a record."""
  rc = seed_config(sw.run_config, seed)
  key, run = (spec.name, seed), case_lib.run_key(spec.name, seed)
  parallel.check_interrupt(f'before case {spec.name}, seed {seed}')
  with locks.run_lock(sw.workdir, run, sw.config.process_id):
    sw.done[key] = sw.load(key)
    if sw.done[key] is not None:
      logging.info('Case %s, seed %d was finished by another process: kept.', *key)
      return sw.done[key]
    sw.check_device(spec.name, seed)
    parallel.on_writer('claiming the checkpoints', layout.claim_checkpoints, sw.workdir, run,
                       sw.fingerprints[key])
    c = case_lib.with_weights(plan.case, rc, pretrained)  # the case as planned, this seed's weights
    train, val, test = sw.splits(seed)
    rec = case_lib.run_case(rc, plan, c, train, test, metrics, sw.workdir, sw.mesh, defer,
                            validation=val, stop_at_step=stop_at_step, kept=sw.kept,
                            paused=sw.paused)
    if isinstance(rec, case_lib.Rung):
      return rec
    if callable(rec):
      sw.later.append((key, plan, rec))
      return None
    _save(sw, key, rec)
  return rec


def save_later(sw, wait=False):
  """Saves the records of sw.later whose counting twins have compiled, in order (with `wait`,
  all of them, waiting for their twins)."""
  while sw.later and (wait or sw.later[0][1].is_counted()):
    key, _, finish = sw.later.pop(0)
    with locks.run_lock(sw.workdir, case_lib.run_key(*key), sw.config.process_id):
      _save(sw, key, finish())


def _save(sw, key, rec):
  sw.done[key] = rec
  parallel.on_writer('writing a record', layout.save_done, sw.workdir, case_lib.run_key(*key),
                     rec, sw.fingerprints[key], sw.fingerprint)


def _runs(sw):
  """The finished runs, case-major in config order, then seed order."""
  return [sw.done[(s.name, seed)] for s in sw.specs for seed in sw.seeds
          if sw.done[(s.name, seed)] is not None]


def new_summary(config, facts, eval_compile_s, env=None):
  """The summary before its runs: `facts` from Sweep.facts, `env` (default: this process's)
  from environment()."""
  return dict(
      name=config.name, dry_run=bool(config.dry_run), model=config.model,
      source_dataset=config.source_dataset if config.pretrained == 'source' else None,
      target_dataset=config.target_dataset, num_classes=facts['num_classes'],
      train_examples=facts['train_examples'], test_examples=facts['test_examples'],
      validation_examples=facts.get('validation_examples', 0),
      data=facts['data'], pretraining={}, e_mac_j=config.e_mac_j, e_byte_j=config.e_byte_j,
      seeds=list(facts['seeds']), planned_cases=list(facts['cases']),
      eval_compile_s=eval_compile_s, compile=None,
      fingerprint=facts['fingerprint'], config=config.to_dict(), search=None,
      environment=env or environment(config), cases=[], runs=[])


def environment(config):
  """Versions and the device the numbers were measured with."""
  dev = jax.devices()[0]
  return {
      'jax': jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
      'orbax_checkpoint': getattr(ocp, '__version__', 'unknown'),
      'numpy': np.__version__, 'python': platform.python_version(),
      'backend': jax.default_backend(), 'device': str(dev.device_kind),
      'device_count': jax.device_count(), 'platform': platform.platform(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'xla_compiler_options': backend.compiler_options(config),
  }
