"""One freeze case: its model, variables and freeze labels, its compiled steps, its training."""

import dataclasses
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import optax

from tljax.accounting import costs
from tljax.accounting import device_memory
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
  cache_decision: Any = None  # cache_plan.Decision: the plan's (which cut `cached` is at)


def plan_case(config, case, num_classes, eval_batch, mesh=None, train=None):
  """Makes `case` (random weights: compiling needs only shapes) and compiles its steps over
  `mesh` (default: one device); the prefix cache's steps where cache_plan's cost model says a
  run of `config` on `train` (the target's train split; None: at the deepest cut, each run
  decides) gains from it."""
  mesh = parallel.default(mesh)
  c = make_case(config, case, num_classes)
  parallel.check_interrupt(f'before compiling case {c.name}')
  steps = compiled.compile_steps(c.model, c.tx, c.trainable, c.state, config, eval_batch, mesh)
  compile_s, train_cost, eval_cost = steps.compile_s, steps.train_cost, steps.eval_cost
  eval_s = compiled.eval_compile_s(c.model, c.state, config, eval_batch, mesh)
  cached = None
  cut = prefix_cache.cut_index(c.model, c.trainable_names,
                               freezing.trainable_params_by_layer(c.labels))
  choice = cache_plan.plan(config, c.model, c.variables, cut, eval_cost['flops'] / eval_batch,
                           train)
  if choice.cache:
    cut = choice.cut.index
    cached = prefix_cache.compile_steps(c.model, c.tx, c.trainable, c.state, config,
                                        eval_batch, cut, mesh)
  counting = costs.counting_model(c.model)
  if counting is not None:  # the FLOPs as counted (docs/accounting.md "FLOPs per backend")
    twin = _counting_twin(c, counting, config, eval_batch, cut if cached is not None else None)
    compile_s += twin['compile_s']
    eval_s += twin['eval_compile_s']
    train_cost = costs.with_counted_flops(train_cost, twin['train_cost'])
    eval_cost = costs.with_counted_flops(eval_cost, twin['eval_cost'])
    if cached is not None:
      prefix_cache.count_on(cached, twin['cached'])
  device_mem, device_xla = _device_memory(c, config)
  c = dataclasses.replace(c, variables=None, state=None)  # no plan holds weights while waiting
  return Plan(c, steps.train, steps.eval, compile_s, train_cost, eval_cost, eval_batch, eval_s,
              cached, device_mem, device_xla, choice)


def _counting_twin(c, counting, config, eval_batch, cut):
  """The steps of case `c` compiled with `counting` (costs.counting_model) on the counting
  device, one device with the whole batch: their costs, only to be counted."""
  mesh = parallel.Mesh.on(costs.counting_device())
  steps = compiled.compile_steps(counting, c.tx, c.trainable, c.state, config, eval_batch, mesh)
  return dict(
      train_cost=steps.train_cost, eval_cost=steps.eval_cost, compile_s=steps.compile_s,
      eval_compile_s=compiled.eval_compile_s(counting, c.state, config, eval_batch, mesh),
      cached=None if cut is None else prefix_cache.compile_steps(
          counting, c.tx, c.trainable, c.state, config, eval_batch, cut, mesh))


def _device_memory(c, config):
  """The device memory model of case `c` and its XLA cross-check (one more compile of the
  train step, at config.device_batch_size; skipped in a dry run, which checks the path only, and
  with config.device_xla_check=False)."""
  model = device_memory.case_device_memory(c, config)
  if config.dry_run or not config.device_xla_check:
    return model, None
  step = compiled.compile_train(c.model, c.tx, c.trainable, c.state, config,
                                config.device_batch_size)
  return model, device_memory.xla_cross_check(step.cost, config.device_batch_size, model)


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


def run_case(config, plan, case, target, target_test, metrics, workdir, mesh):
  """Trains `case` (this seed's weights) with the compiled steps of `plan` over `mesh`; its
  record."""
  key = run_key(case.name, compiled.seed_of(config))
  # The optimiser the steps were compiled with (the same for every seed): its state's structure
  # is the compiled step's input.
  state = compiled.new_state(case.variables, plan.case.tx, compiled.seed_of(config), mesh)
  ckpt = None if config.dry_run else checkpoints.Checkpoints(layout.case_dir(workdir, key))
  try:
    out = _train(config, plan, state, (target, target_test), metrics,
                 dict(case=case.name, seed=compiled.seed_of(config), run=key),
                 layout.prefix_cache_dir(workdir, key), ckpt, mesh)
  finally:
    if ckpt is not None:
      ckpt.close()
  return record.run_record(config, plan, case, out, mesh)


def _train(config, plan, state, splits, metrics, tags, cache_dir, ckpt, mesh):
  """Fits and evaluates one run, on cached prefix activations where cache_plan says so (the
  train examples the run visits only); the test split on the whole model."""
  prep = inputs.prep_fn(config, config.target_dataset)
  train_c, (train_arrays, test_arrays), train_prep = plan.train_c, splits, prep
  decision, used = cache_plan.for_run(config, plan.cache_decision or cache_plan.Decision(
      False, 'not planned'), plan.cached, train_arrays, tags['seed'], cache_dir)
  logging.info('Prefix cache, case %s, seed %d: %s', tags['case'], tags['seed'], decision.line())
  cache = None
  try:
    if decision.cache:  # frozen prefix once per visited example; train the suffix
      cache = prefix_cache.build(plan.cached, state, train_arrays, used, batch=config.batch_size,
                                 prep=prep, directory=cache_dir, mesh=mesh)
      train_c, train_arrays, train_prep = (plan.cached.train, cache.train,
                                           prefix_cache.identity_prep)
    desc = f'{tags["case"]} (seed {tags["seed"]})'
    state, steps, wall, diverged_at = fit.fit(state, fit.Loop(
        train_c, train_arrays, config, prep=train_prep, epochs=config.epochs, desc=desc,
        metrics=metrics, tags=tags, ckpt=ckpt, mesh=mesh))
    acc = loss = None
    if diverged_at is None:
      acc, loss = fit.evaluate(plan.eval_c, state, test_arrays, config, prep, mesh)
  finally:
    if cache is not None:
      cache.delete()
  return record.Outcome(acc, loss, steps, wall, diverged_at, len(splits[1]), cache, decision)
