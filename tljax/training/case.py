"""One freeze case: its model, variables and freeze labels, its compiled steps, its training."""

import dataclasses
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import optax

from tljax.accounting import costs
from tljax.accounting import device_memory
from tljax.accounting import meters
from tljax.data import inputs
from tljax.runtime import backend
from tljax.runtime import parallel
from tljax.sweep import layout
from tljax.training import cache_plan
from tljax.training import checkpoints
from tljax.training import compiled
from tljax.training import fit
from tljax.training import freezing
from tljax.training import prefix_cache
from tljax.training import record
from tljax.training.steps import TrainState


@dataclasses.dataclass
class Case:
  """Everything one freeze case trains with, for one seed."""
  spec: freezing.CaseSpec
  model: Any
  layers: tuple
  trainable_names: tuple  # the layers in training mode (spec.active_layers)
  variables: dict
  labels: Any
  trainable: Any  # static tree of bools over params
  tx: Any
  state: TrainState
  reinit: set
  cache_decision: Any = None  # cache_plan.Decision of its plan (case_parts), or None

  @property
  def name(self):
    return self.spec.name


def make_case(config, case, num_classes, pretrained=None):
  """The model, variables, freeze labels, optimiser and initial state of `case` (an int, a case
  string or rules; freezing.case_spec) at the seed of `config`."""
  plain = compiled.model_for(config, num_classes)
  layers = plain.keras_layers()
  fresh = _fresh(plain, config)
  spec = case if isinstance(case, freezing.CaseSpec) else freezing.case_spec(
      case, layers, config.case_counting, params=fresh['params'])
  model = compiled.model_for(config, num_classes,
                             {l.name for l in layers} - set(spec.active_layers))
  labels = freezing.label_tree(fresh['params'], spec.rules)
  logging.info('Case %s: %d layers in training mode: %s', spec.name, len(spec.active_layers),
               ', '.join(spec.active_layers))
  tx = freezing.make_optimizer(optax.adam(config.learning_rate), labels)
  trainable = jax.tree.map(lambda l: l == freezing.TRAINABLE, labels)
  c = Case(spec, model, layers, spec.active_layers, fresh, labels, trainable, tx, None, set())
  c = with_weights(c, config, pretrained)
  c.state = compiled.new_state(c.variables, tx, compiled.seed_of(config))
  return c


def _fresh(model, config):
  """The model's random initial variables at the seed of `config` (they do not depend on which
  layers are frozen: init_variables unfreezes)."""
  return compiled.init_variables(model, config,
                                 jax.random.fold_in(jax.random.key(compiled.seed_of(config)), 2))


def with_weights(case, config, pretrained=None):
  """`case` as planned (its model, labels and optimiser, built once) with the variables of the
  seed of `config`: fresh ones, the base overwritten by `pretrained` (merge), the head
  re-initialised where the target task needs it (head_to_reinit). No train state: the run
  makes its own."""
  fresh = _fresh(case.model, config)
  reinit = head_to_reinit(config, case.layers, pretrained, fresh)
  variables = fresh if pretrained is None else merge(fresh, pretrained, case.layers, reinit)
  return dataclasses.replace(case, variables=variables, reinit=reinit, state=None)


def merge(fresh, pretrained, layers, new_head_layers):
  """Fresh variables overwritten by pretrained ones, strictly: every base layer must come from
  `pretrained` with the same shapes; layers in `new_head_layers` keep their fresh init."""
  out = {}
  base = {l.name for l in layers if l.base}
  for col, tree in fresh.items():
    out[col] = {}
    src = pretrained.get(col, {})
    for name, sub in tree.items():
      if name in new_head_layers or (name not in src and name not in base):
        out[col][name] = sub
        continue
      if name not in src:
        raise ValueError(f'Pretrained weights lack {col}/{name}.')
      fs, ps = jax.tree.map(jnp.shape, sub), jax.tree.map(jnp.shape, src[name])
      if fs != ps:
        raise ValueError(f'Pretrained {col}/{name} has shapes {ps}, the model needs {fs}.')
      out[col][name] = src[name]
    extra = set(src) - set(tree)
    if extra:
      raise ValueError(f'Pretrained weights have layers the model lacks: {sorted(extra)}.')
  return out


def same_task(config):
  """Whether the target task is the source task: the same dataset (for image folders, the same
  folder) with the same classes, in the same order. Only then may `new_head='auto'` keep the
  source classifier."""
  return (config.pretrained == 'source' and config.source_dataset == config.target_dataset
          and config.source_data_dir == config.target_data_dir
          and tuple(config.source_classes) == tuple(config.target_classes))


def head_to_reinit(config, layers, pretrained, fresh):
  """Layers to re-initialise for the target task: the classifier, unless `new_head='never'` or
  `'auto'` with the same task as the source (a 10-class classifier of digits is no classifier
  of objects, whatever its shape)."""
  classifier = [l.name for l in layers if l.kind == 'Dense'][-1:]
  if pretrained is None:
    return set()
  src = pretrained['params']
  if config.new_head == 'always' or (config.new_head == 'auto' and not same_task(config)):
    return set(classifier) | {l.name for l in layers if not l.base and l.name not in src}
  differs = {n for n in classifier if n in src and
             jax.tree.map(jnp.shape, src[n]) != jax.tree.map(jnp.shape, fresh['params'][n])}
  if differs:
    raise ValueError(f"config.new_head={config.new_head!r} keeps the source classifier, but "
                     f'{sorted(differs)} changes shape for the target classes; use '
                     "config.new_head='auto' or 'always'.")
  return set()


@dataclasses.dataclass
class Plan:
  """A case compiled, with its costs, before any case trains (the same for every seed)."""
  case: Case
  train_c: Any
  eval_c: Any
  compile_s: float
  train_cost: dict
  eval_cost: dict
  eval_batch: int
  eval_compile_s: float  # the shared eval step's compilation: reported once, not per case
  cached: Any = None  # prefix_cache.Compiled when the case trains on cached prefix activations
  device_memory: Any = None  # device_memory.case_device_memory at config.device_batch_size
  device_xla: Any = None  # its cross-check: XLA's analysis at that batch (None in a dry run)
  counting: Any = None  # its counting twin while the compile pool compiles it (compile_pool)
  cache_decision: Any = None  # cache_plan.Decision: the plan's (which cut `cached` is at)

  def counted(self):
    """The plan with the FLOPs of its counting twin (docs/accounting.md "FLOPs per backend")
    and its device-memory cross-check, waiting for them where the compile pool compiles them
    still (or compiling them now: compile_pool's serial order leaves them to the first ask)."""
    if self.counting is not None:
      twin, self.counting = self.counting(), None
      _count(self, twin)
    return self

  def is_counted(self):
    return self.counting is None or self.counting.ready()


# A case's compilations (case_parts) in the order plan_case runs them. The compile pool runs
# every case's 'train' first (check_memory needs them all); what only its records need, the
# device-memory cross-check and the counting twin's steps (LATE), last (Plan.counted).
PARTS = ('train', 'eval', 'prefix', 'device model', 'device', 'twin train', 'twin eval',
         'twin prefix')
LATE = ('device', 'twin train', 'twin eval', 'twin prefix')


def plan_case(config, case, num_classes, eval_batch, mesh=None, train=None):
  """Makes `case` (random weights: compiling needs only shapes) and compiles its steps over
  `mesh` (default: one device), one after another (compile_pool compiles them on threads);
  `train` as case_parts takes it."""
  c, parts = case_parts(config, case, num_classes, eval_batch, mesh, train)
  return finish_plan(c, {name: part() for name, part in parts.items()}, eval_batch)


def case_parts(config, case, num_classes, eval_batch, mesh=None, train=None):
  """`case` made (its train state as shapes) and its compilations, {part: thunk} in PARTS order:
  the prefix cache's steps where cache_plan's cost model says a run of `config` on `train` (the
  target's train split; None: at the deepest cut, each run decides) gains from it, the counting
  twin's where the steps that run are not the counted ones."""
  mesh = parallel.default(mesh)
  c = make_case(config, case, num_classes)
  parallel.check_interrupt(f'before compiling case {c.name}')
  c = dataclasses.replace(c, state=compiled.shapes(c.state))
  cut = prefix_cache.cut_index(c.model, c.trainable_names,
                               freezing.trainable_params_by_layer(c.labels))
  choice = cache_plan.plan(config, c.model, c.variables, cut, _forward_flops(config, c), train)
  c.cache_decision, cut = choice, choice.cut.index if choice.cache else None
  parts = _steps(c, config, eval_batch, c.model, mesh, cut)
  memory = device_memory.case_device_memory(c, config)
  parts['device model'] = lambda: memory
  parts['device'] = lambda: _device_xla(c, config, memory)
  counting = costs.counting_model(c.model)
  if counting is not None:  # the FLOPs as counted (docs/accounting.md "FLOPs per backend")
    twin = _steps(c, config, eval_batch, counting, parallel.Mesh.on(costs.counting_device()), cut)
    parts.update({f'twin {name}': part for name, part in twin.items()})
  return c, parts


def _forward_flops(config, c):
  """The forward FLOPs per example of case `c`'s model, 2 x its textbook MACs (costs.layer_macs):
  what the cost model scales its cuts' prefixes by, before any step has compiled."""
  shape = (config.image_size, config.image_size, config.channels)
  return 2.0 * sum(l['macs'] for l in costs.layer_macs(c.model, c.variables, shape))


def _steps(c, config, eval_batch, model, mesh, cut):
  """Thunks compiling the train and eval steps of case `c` with `model` over `mesh`, and with a
  `cut` (None: no prefix cache) the prefix cache's steps."""
  args = (model, c.tx, c.trainable, c.state, config)
  steps = dict(train=lambda: compiled.compile_train(*args, config.batch_size, mesh),
               eval=lambda: compiled.compile_eval(model, c.state, config, eval_batch, mesh))
  if cut is not None:
    steps['prefix'] = lambda: prefix_cache.compile_steps(*args, eval_batch, cut, mesh)
  return steps


def finish_plan(c, done, eval_batch, counting=None):
  """The Plan of case `c` from its parts' results, `done` {part: result}; the LATE parts' from
  `done` or, while the compile pool has them still, from `counting` (Plan.counted)."""
  train, ev = done['train'], done['eval']
  c = dataclasses.replace(c, variables=None, state=None)  # no plan holds weights while waiting
  plan = Plan(c, train.fn, ev.fn, train.seconds, train.cost, ev.cost, eval_batch, ev.seconds,
              done.get('prefix'), done['device model'], None, counting, c.cache_decision)
  if 'device' in done:
    _count(plan, done)
  return plan


def _count(plan, late):
  """Gives `plan` its LATE parts' results, `late` {part: result}: the device-memory cross-check,
  and the FLOPs of its counting twin's steps (memory and timings stay those of the steps that
  run, the twin's compile seconds added)."""
  plan.device_xla = late['device']
  if 'twin train' not in late:
    return
  plan.compile_s += late['twin train'].seconds
  plan.eval_compile_s += late['twin eval'].seconds
  plan.train_cost = costs.with_counted_flops(plan.train_cost, late['twin train'].cost)
  plan.eval_cost = costs.with_counted_flops(plan.eval_cost, late['twin eval'].cost)
  if plan.cached is not None:
    prefix_cache.count_on(plan.cached, late['twin prefix'])


def _device_xla(c, config, model):
  """The XLA cross-check of case `c`'s device memory `model` (one more compile of the train step,
  at config.device_batch_size; None in a dry run, which checks the path only, and with
  config.device_xla_check=False)."""
  if config.dry_run or not config.device_xla_check:
    return None
  step = compiled.compile_train(c.model, c.tx, c.trainable, c.state, config,
                                config.device_batch_size)
  return device_memory.xla_cross_check(step.cost, config.device_batch_size, model)


def check_memory(config, plans):
  """Fails before training when a compiled step needs more memory than the device has."""
  available = backend.available_memory_bytes()
  for p in plans:
    need = p.train_cost.get('memory_bytes')
    if need and need > available:
      fixed = p.train_cost['argument_bytes']
      per_example = max(need - fixed, 1) / config.batch_size
      fits = int(max(available * 0.9 - fixed, 0) // per_example)
      raise MemoryError(
          f'Case {p.case.name} needs {need / 2**20:.0f} MiB for its train step at '
          f'config.batch_size={config.batch_size} (XLA memory analysis), but only '
          f'{available / 2**20:.0f} MiB are available. Try --config.batch_size={max(fits, 1)}'
          + ('' if fits else ' or a smaller model/image size') + '.')


def run_key(name, seed):
  """The name of one (case, seed) run in the workdir: checkpoints, records, metrics."""
  return f'{freezing.case_slug(name)}_seed{seed}'


@dataclasses.dataclass
class Rung:
  """A run paused at a rung of a search (fit.Loop.stop_at), checkpointed: where, its validation
  accuracy, its times."""
  step: int
  total_steps: int
  val_accuracy: Any
  val_loss: Any
  val_examples: int
  train_s: float  # the run's training wall from step 0 to `step`, over all its parts
  fill_s: float  # this part's prefix-cache fill
  fill_run_s: float  # the whole run's fill, at this process's seconds per row filled
  short: Any  # the short-training measurement (fit.Probe), once its step has passed


def run_case(config, plan, case, target, target_test, metrics, workdir, mesh, defer=False,
             validation=None, stop_at_step=None, kept=None, paused=None):
  """Trains `case` (this seed's weights) with the compiled steps of `plan` over `mesh`; its
  record. `validation` (the seed's validation split, or None) is evaluated at
  config.short_training_fraction of the run's steps (the record's short_val_accuracy). With
  `stop_at_step` below the run's steps the run pauses there, checkpointed (the next call goes
  on from it, as a resumed run; its state kept in `paused`, a checkpoints.Paused), and returns a
  Rung instead. With `defer`, while the plan's counting twin compiles still: a function giving
  the record."""
  key = run_key(case.name, compiled.seed_of(config))
  # The optimiser the steps were compiled with (the same for every seed): its state's structure
  # is the compiled step's input.
  state = compiled.new_state(case.variables, plan.case.tx, compiled.seed_of(config), mesh)
  paused = paused or checkpoints.Paused(lambda: 0)  # none kept: a next part reads it back
  ckpt, out = None if config.dry_run else paused.open(key, layout.case_dir(workdir, key)), None
  try:
    out = _train(config, plan, state, (target, target_test), metrics,
                 dict(case=case.name, seed=compiled.seed_of(config), run=key),
                 layout.prefix_cache_dir(workdir, key), ckpt, mesh, validation, stop_at_step,
                 kept)
  finally:
    if ckpt is not None:
      paused.put(key, ckpt, isinstance(out, Rung))
  if isinstance(out, Rung):
    return out
  finish = lambda: record.run_record(config, plan.counted(), case, out, mesh)
  return finish if defer and not plan.is_counted() else finish()


def _train(config, plan, state, splits, metrics, tags, cache_dir, ckpt, mesh, validation=None,
           stop_at_step=None, kept=None):
  """Fits and evaluates one run, on cached prefix activations where cache_plan says so (the
  train examples the whole run visits only; the test split on the whole model); a Rung when it
  pauses at `stop_at_step` (None: it trains every step)."""
  prep = inputs.prep_fn(config, config.target_dataset)
  train_c, (train_arrays, test_arrays), train_prep = plan.train_c, splits, prep
  total = config.epochs * fit.steps_per_epoch(config, train_arrays)
  probe = None if validation is None else fit.Probe(
      fit.fraction_step(total, config.short_training_fraction),
      lambda s: dict(zip(('short_val_accuracy', 'short_val_loss'),
                         _validate(config, plan, s, validation, mesh))))
  # Every part of a run (a search's rung) decides as the whole run does and fills the chunks
  # its own steps read: the same numbers when it goes on (docs/search.md).
  decision, visits = cache_plan.for_run(config, plan.cache_decision or cache_plan.Decision(
      False, 'not planned'), plan.cached, train_arrays, tags['seed'], cache_dir)
  logging.info('Prefix cache, case %s, seed %d: %s', tags['case'], tags['seed'], decision.line())
  cache, fill_s = None, time.perf_counter()
  try:
    if decision.cache:  # frozen prefix once per visited example; train the suffix
      cache = _cache(plan.cached, train_arrays, visits, kept, tags['run'], cache_dir)
      start = (ckpt.latest_step() if ckpt else None) or 0  # a resumed part: its own steps
      cache.fill(plan.cached, state, train_arrays, visits.chunks(start, stop_at_step or total),
                 prep=prep, mesh=mesh)
    fill_s = time.perf_counter() - fill_s
    if cache is not None:
      train_c, train_arrays, train_prep = (plan.cached.train, cache.train,
                                           prefix_cache.identity_prep)
    desc = f'{tags["case"]} (seed {tags["seed"]})'
    loop = fit.Loop(train_c, train_arrays, config, prep=train_prep, epochs=config.epochs,
                    desc=desc, metrics=metrics, tags=tags, ckpt=ckpt, mesh=mesh,
                    stop_at=stop_at_step, probe=probe)
    with meters.measuring(config, ckpt) as measured:  # None unless config.energy_meter is on
      state, steps, wall, diverged_at = fit.fit(state, loop)
    if diverged_at is None and steps < total:  # paused at a rung
      val = ((None, None) if probe is None else (
          loop.probed['short_val_accuracy'], loop.probed['short_val_loss'])
             if steps == probe.step else _validate(config, plan, state, validation, mesh))
      fill_run_s = cache.seconds * cache.rows / cache.examples if cache and cache.examples else 0.0
      if cache is not None and kept is not None:  # for the run's next part
        kept.keep(tags['run'], cache)
        cache = None
      return Rung(steps, total, *val, len(validation or ()), wall, fill_s, fill_run_s,
                  loop.probed)
    acc = loss = None
    val = (None, None)
    if diverged_at is None:
      acc, loss = fit.evaluate(plan.eval_c, state, test_arrays, config, prep, mesh)
      if validation is not None:  # halving's last rung (docs/search.md)
        val = _validate(config, plan, state, validation, mesh)
  finally:
    if cache is not None:
      cache.delete()
  return record.Outcome(acc, loss, steps, wall, diverged_at, len(splits[1]), cache, measured,
                        loop.probed, decision, val)


def _cache(compiled, train, visits, kept, run, directory):
  """Run `run`'s prefix Cache: the one its previous part kept (prefix_cache.Kept), else a new
  empty one."""
  key = (compiled.cut, visits.seed, visits.batch, len(visits.order))
  cache = kept.take(run, key) if kept is not None else None
  return cache or prefix_cache.build(compiled, train, visits, directory=directory)


def _validate(config, plan, state, validation, mesh):
  """(accuracy, mean loss) of `state` on the validation split: the whole model's eval step (at
  the batch it was compiled for), whether or not the run trains on cached prefix activations."""
  prep = inputs.prep_fn(config, config.target_dataset)
  return fit.evaluate(plan.eval_c, state, validation, config, prep, mesh, batch=plan.eval_batch)
