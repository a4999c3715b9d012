"""The experiment: pretrain (cached), fine-tune once per freeze case, account, report."""

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from tljax import accounting
from tljax import backend
from tljax import checks
from tljax import data
from tljax import freezing
from tljax import interrupt
from tljax import models
from tljax import parallel
from tljax import prefix_cache
from tljax import report
from tljax import resume
from tljax import workdir_lock
from tljax.steps import TrainState, eval_step, train_step

# The fields that pretraining depends on: its cache key.
PRETRAIN_FIELDS = ('model', 'image_size', 'channels', 'source_dataset', 'source_classes',
                   'pretrain_epochs', 'pretrain_learning_rate', 'batch_size', 'seed',
                   'steps_per_epoch', 'bn_momentum', 'data_parallel', 'xla_cpu_tuning')


def _environment(config):
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


def _prep_fn(config, dataset_name):
  return functools.partial(data.preprocess, image_size=config.image_size,
                           channels=config.channels, fit=data.fit_of(dataset_name),
                           pixel_scale=models.pixel_scale(config.model))


def _model(config, num_classes, frozen=frozenset()):
  return models.create(config.model, num_classes=num_classes, frozen=frozenset(frozen),
                       bn_momentum=config.bn_momentum, frozen_dropout=config.frozen_dropout,
                       depthwise_impl=config.depthwise_impl)


def _input_spec(config, batch):
  return jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, config.channels),
                              jnp.float32)


# Compiled once per process and shape, shared by every case: the random initial variables
# (independent of which layers are frozen) and the evaluation step (inference mode everywhere,
# so the same program for every case), with the seconds its compilation took.
_INIT_CACHE = {}
_EVAL_CACHE = {}


def _init_variables(model, config, rng):
  key = (config.model, model.num_classes, config.image_size, config.channels,
         tuple(jax.random.key_data(rng).tolist()))
  if key not in _INIT_CACHE:
    x = jnp.zeros((1, config.image_size, config.image_size, config.channels), jnp.float32)
    # Initialisers draw from an 'rbg' key derived from `rng`: the same values for the same seed,
    # and a 2-3x faster compile than threefry for EfficientNet's ~300 arrays on CPU.
    init_rng = jax.random.key(jax.random.randint(rng, (), 0, 2**31 - 1), impl='rbg')
    variables = jax.jit(functools.partial(model.clone(frozen=frozenset()).init, train=False))(
        init_rng, x)
    _INIT_CACHE.clear()  # keep only the latest model's
    _INIT_CACHE[key] = flax.core.unfreeze(variables)
  return _INIT_CACHE[key]


def compile_steps(model, tx, trainable, state, config, eval_batch, mesh=None):
  """Compiles the train step of this case and (once per shape) the eval step.

  Returns (train, eval, seconds to compile the train step). The eval step's compilation is
  shared by every case and not in those seconds (`eval_compile_s`). The FLOP count is read
  from exactly these compiled executables, and training runs exactly them. With a
  `parallel.Mesh`, both run data-parallel: batch sharded over the devices, state replicated.
  """
  t0 = time.perf_counter()
  shard = {}
  if mesh is not None:
    shard = dict(in_shardings=(mesh.replicated, mesh.batch, mesh.batch),
                 out_shardings=(mesh.replicated, mesh.replicated))
  train_jit = jax.jit(functools.partial(train_step, model=model, tx=tx, trainable=trainable),
                      donate_argnums=0, **shard)
  train_c = backend.compile(train_jit.lower(state, _input_spec(config, config.batch_size),
                                            jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)),
                            config)
  train_s = time.perf_counter() - t0
  return train_c, _eval_compiled(model, state, config, eval_batch, mesh)[0], train_s


def eval_compile_s(model, state, config, eval_batch, mesh=None):
  """Seconds it took to compile the eval step that `compile_steps` gave for these arguments."""
  return _eval_compiled(model, state, config, eval_batch, mesh)[1]


def _eval_compiled(model, state, config, eval_batch, mesh=None):
  """(eval step, seconds its compilation took), compiled once per process and shape."""
  options = backend.compiler_options(config)
  key = (config.model, model.num_classes, config.image_size, config.channels, eval_batch,
         accounting.depthwise_impls(model)[0], jax.default_backend(),
         mesh is not None and mesh.num_devices, tuple(sorted(options.items())))
  if key not in _EVAL_CACHE:
    t0 = time.perf_counter()
    eval_model = model.clone(frozen=frozenset())
    shard = {}
    if mesh is not None:
      shard = dict(in_shardings=(mesh.replicated,) * 2 + (mesh.batch,) * 3,
                   out_shardings=mesh.replicated)
    eval_jit = jax.jit(functools.partial(eval_step, model=eval_model), **shard)
    compiled = backend.compile(eval_jit.lower(
        state.params, state.batch_stats, _input_spec(config, eval_batch),
        jax.ShapeDtypeStruct((eval_batch,), jnp.int32),
        jax.ShapeDtypeStruct((eval_batch,), jnp.float32)), config)
    _EVAL_CACHE[key] = (compiled, time.perf_counter() - t0)
  return _EVAL_CACHE[key]


def _evaluate(eval_c, state, arrays, config, prep, mesh=None):
  sums = None
  put = mesh.put_batch if mesh is not None else (lambda x: x)
  for images, labels, mask in data.prefetch(
      data.eval_batches(arrays, _eval_batch(config, arrays, mesh), prep=prep)):
    out = eval_c(state.params, state.batch_stats, put(images), put(labels), put(mask))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return float(sums['correct'] / sums['count']), float(sums['loss'] / sums['count'])


def _eval_batch(config, arrays, mesh=None):
  """The eval batch: at most the split's size, a multiple of the mesh's devices."""
  b = min(config.eval_batch_size, len(arrays))
  if mesh is not None:
    b = -(-b // mesh.num_devices) * mesh.num_devices
  return b


def _fit(state, train_c, arrays, config, *, prep, epochs, desc, metrics, case, ckpt=None,
         mesh=None):
  """Runs the compiled step over `epochs` epochs, from the latest checkpoint in `ckpt` if any.

  Checkpoints (every config.checkpoint_every_steps, at logging steps so no metric is pending)
  hold the whole train state; the data position follows from its step, since batches depend
  only on (seed, epoch, index). Returns (state, steps, wall_s, diverged_at).
  """
  steps_per_epoch = len(arrays) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the '
                     f'{len(arrays)} training examples of {arrays.name!r}.')
  if config.steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
  total = epochs * steps_per_epoch
  steps, wall_before, pending = 0, 0.0, []
  if ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    if mesh is not None:
      state = mesh.put_replicated(state)
    steps, wall_before = int(meta['step']), float(meta['wall_s'])
    pending = _unpack_pending(meta.get('pending'))
    logging.info('%s: resuming from the checkpoint at step %d of %d', desc, steps, total)
  last_ckpt = steps
  bar = tqdm.tqdm(total=total, initial=steps, desc=desc, unit='step',
                  disable=not config.progress, dynamic_ncols=True)
  diverged_at = None
  t0 = time.perf_counter()
  t_log, steps_log = t0, steps
  for epoch in range(steps // steps_per_epoch, epochs):
    start = steps - epoch * steps_per_epoch
    batches = data.train_batches(arrays, config.batch_size, seed=config.seed, epoch=epoch,
                                 start_step=start, prep=prep)
    for images, labels in data.prefetch(batches):
      if steps >= (epoch + 1) * steps_per_epoch:
        break
      if interrupt.requested():  # SIGINT/SIGTERM: checkpoint this step (and pending metrics)
        bar.close()
        if ckpt is not None and steps > last_ckpt:
          ckpt.save(state, {'step': steps, 'epoch': epoch, 'pending': _pack_pending(pending),
                            'wall_s': wall_before + time.perf_counter() - t0})
        interrupt.check(f'{desc}, step {steps} of {total}' + (
            f', checkpoint saved in {ckpt.directory}' if ckpt is not None and steps else ''))
      if mesh is not None:
        images, labels = mesh.put_batch(images), mesh.put_batch(labels)
      state, m = train_c(state, images, labels)
      pending.append(m)
      steps += 1
      bar.update(1)
      if steps % config.log_every_steps and steps != total:
        continue
      vals = jax.device_get(pending)
      pending = []
      loss = float(np.mean([v['loss'] for v in vals]))
      acc = float(np.mean([v['accuracy'] for v in vals]))
      now = time.perf_counter()
      rate = (steps - steps_log) * config.batch_size / max(now - t_log, 1e-9)
      t_log, steps_log = now, steps
      metrics.write(case=case, step=steps, epoch=epoch, train_loss=loss, train_accuracy=acc,
                    examples_per_s=rate)
      bar.set_postfix(loss=f'{loss:.4f}', ex_per_s=f'{rate:.0f}')
      bad = [j for j, v in enumerate(vals) if not np.isfinite(v['loss'])]
      if bad:
        diverged_at = steps - len(vals) + bad[0] + 1
        logging.warning('%s: loss is not finite at step %d; stopping this case.', desc,
                        diverged_at)
        bar.close()
        return state, steps, wall_before + time.perf_counter() - t0, diverged_at
      if (ckpt is not None and config.checkpoint_every_steps and steps < total
          and steps - last_ckpt >= config.checkpoint_every_steps):
        ckpt.save(state, {'step': steps, 'epoch': epoch,
                          'wall_s': wall_before + time.perf_counter() - t0})
        last_ckpt = steps
  jax.block_until_ready(state)
  bar.close()
  return state, steps, wall_before + time.perf_counter() - t0, diverged_at


def _pack_pending(pending):
  """Metrics of the steps since the last log line, as JSON for a checkpoint's metadata."""
  vals = jax.device_get(pending)
  return [{k: [float(v), np.asarray(v).dtype.name] for k, v in m.items()} for m in vals]


def _unpack_pending(packed):
  """The inverse of _pack_pending, with the same dtypes (so the next log line's means match)."""
  return [{k: np.asarray(v, dtype) for k, (v, dtype) in m.items()} for m in packed or []]


def _new_state(variables, tx, seed, mesh=None):
  # Own copies: the train step donates its state, and `variables` (pretrained weights) are
  # shared by every case.
  variables = jax.tree.map(lambda x: jnp.array(x, copy=True), variables)
  params = variables['params']
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                     rng=jax.random.fold_in(jax.random.key(seed), 1))
  return mesh.put_replicated(state) if mesh is not None else state


def _pretrain_key(config, source_identity):
  """Cache key of the pretrained model: PRETRAIN_FIELDS and the source data's identity (for a
  folder its fingerprint, not its path: a moved copy is the same data)."""
  fields = {f: config[f] for f in PRETRAIN_FIELDS}
  fields['source_data'] = {k: v for k, v in source_identity.items() if k != 'root'}
  blob = json.dumps(fields, sort_keys=True, default=list)
  return f'{config.model}_{config.source_dataset}_' + hashlib.sha256(blob.encode()).hexdigest()[:12]


def _load(config, role, split):
  """Split `split` of the source or target (`role`) dataset of `config`."""
  return data.load(config[f'{role}_dataset'], split, classes=tuple(config[f'{role}_classes']),
                   data_dir=config.data_dir or None, root=config[f'{role}_data_dir'] or None,
                   model_input=_model_input(config), mock=config.dry_run,
                   mock_examples=max(data.MOCK_EXAMPLES, config.batch_size,
                                     config.eval_batch_size))


def _model_input(config):
  return data.ModelInput(config.image_size, config.channels, config.cache_dir,
                         int(config.data_memory_mb * 2**20))


def data_identity(config):
  """{'source': ..., 'target': ...}: what the run's data are (data.identity), checked on resume
  and recorded in the summary."""
  out = {}
  for role in ('source', 'target'):
    name, root = config[f'{role}_dataset'], config[f'{role}_data_dir']
    if role == 'source' and config.pretrained != 'source':
      continue
    if data.is_folder(name) and not root:
      raise ValueError(f'config.{role}_dataset={name!r} needs config.{role}_data_dir: the folder '
                       'holding train/<class>/<image> and test/<class>/<image>.')
    try:
      out[role] = data.identity(name, root=root or None, data_dir=config.data_dir or None,
                                mock=config.dry_run)
    except ValueError as e:
      raise ValueError(f'config.{role}_data_dir={root!r}: {e}') from e
  return out


def _pretrain(config, metrics, workdir, source_identity, mesh=None):
  """Source pretraining with every layer trainable, cached as an orbax checkpoint."""
  src = _load(config, 'source', 'train')
  src_test = _load(config, 'source', 'test')
  path = os.path.abspath(os.path.join(config.cache_dir, 'pretrained',
                                      _pretrain_key(config, source_identity)))
  model = _model(config, src.num_classes)
  rng = jax.random.key(config.seed)
  variables = _init_variables(model, config, rng)
  ckptr = ocp.StandardCheckpointer()
  info_path = os.path.join(path, 'pretrain.json')
  if os.path.exists(info_path):
    logging.info('Reusing the pretrained model in %s', path)
    restored = ckptr.restore(os.path.join(path, 'variables'), variables)
    with open(info_path) as f:
      info = json.load(f)
    info['cached'] = True
    return restored, info
  labels = jax.tree.map(lambda _: freezing.TRAINABLE, variables['params'])
  tx = freezing.make_optimizer(optax.adam(config.pretrain_learning_rate), labels)
  state = _new_state(variables, tx, config.seed, mesh)
  trainable = jax.tree.map(lambda _: True, variables['params'])
  train_c, eval_c, compile_s = compile_steps(model, tx, trainable, state, config,
                                              _eval_batch(config, src_test, mesh), mesh)
  compile_s += eval_compile_s(model, state, config, _eval_batch(config, src_test, mesh), mesh)
  prep = _prep_fn(config, config.source_dataset)
  state, steps, wall, diverged = _fit(state, train_c, src, config, prep=prep,
                                      epochs=config.pretrain_epochs, desc='pretrain',
                                      metrics=metrics, case='pretrain',
                                      ckpt=resume.Checkpoints(resume.case_dir(workdir, 'pretrain')),
                                      mesh=mesh)
  if diverged:
    raise FloatingPointError(f'Pretraining on {config.source_dataset!r} diverged at step '
                             f'{diverged}; lower config.pretrain_learning_rate.')
  acc, loss = _evaluate(eval_c, state, src_test, config, prep, mesh)
  info = dict(dataset=config.source_dataset, classes=list(config.source_classes),
              num_classes=src.num_classes, train_examples=len(src), test_examples=len(src_test),
              epochs=config.pretrain_epochs, steps=steps, wall_s=wall, compile_s=compile_s,
              test_accuracy=acc, test_loss=loss, path=path, cached=False)
  logging.info('Pretrained on %s: test accuracy %.4f, loss %.4f', config.source_dataset, acc,
               loss)
  tmp = path + f'.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  ckptr.save(os.path.join(tmp, 'variables'),
             {'params': state.params, 'batch_stats': state.batch_stats})
  ckptr.wait_until_finished()
  report.write_json(os.path.join(tmp, 'pretrain.json'), info)
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  os.replace(tmp, path)
  shutil.rmtree(resume.case_dir(workdir, 'pretrain'), ignore_errors=True)
  return {'params': state.params, 'batch_stats': state.batch_stats}, info


def _pretrained_variables(config, metrics, workdir, identity, mesh=None):
  """(variables or None, info): the weights every case starts from."""
  if config.dry_run or config.pretrained == 'none':
    return None, {'source': 'random init' + (' (dry run)' if config.dry_run else '')}
  if config.pretrained == 'imagenet':
    from tljax import weights  # pylint: disable=g-import-not-at-top
    variables = weights.imagenet_variables(config.model, config.cache_dir)
    return variables, {'source': 'imagenet', 'model': config.model}
  return _pretrain(config, metrics, workdir, identity['source'], mesh)


def _merge(fresh, pretrained, layers, new_head_layers):
  """Fresh variables overwritten by pretrained ones, strictly: every base layer must come from
  `pretrained` with the same shapes; layers in `new_head_layers` keep their fresh init."""
  out = {}
  base = {l.name for l in layers if l.base}
  for col, tree in fresh.items():
    out[col] = {}
    src = pretrained.get(col, {})
    for name, sub in tree.items():
      if name in new_head_layers:
        out[col][name] = sub
        continue
      if name not in src:
        if name in base:
          raise ValueError(f'Pretrained weights lack {col}/{name}.')
        out[col][name] = sub
        continue
      fs = jax.tree.map(jnp.shape, sub)
      ps = jax.tree.map(jnp.shape, src[name])
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


def _head_to_reinit(config, layers, pretrained, fresh):
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
class Case:
  """Everything one freeze case trains with."""
  n: int
  model: Any
  layers: tuple
  trainable_names: tuple
  variables: dict
  labels: Any
  trainable: Any  # static tree of bools over params
  tx: Any
  state: TrainState
  reinit: set
  spec: Any = None  # freezing.CaseSpec


def make_case(config, n, num_classes, pretrained=None):
  """The model, variables, freeze labels, optimiser and initial state of case `n` (an int, a
  case string or rules: freezing.case_spec); `trainable_names` are its active layers."""
  plain = _model(config, num_classes)
  layers = plain.keras_layers()
  fresh = _init_variables(plain, config, jax.random.fold_in(jax.random.key(config.seed), 2))
  spec = freezing.case_spec(n, layers, config.case_counting, params=fresh['params'])
  trainable_names = spec.active_layers
  model = _model(config, num_classes, {l.name for l in layers} - set(trainable_names))
  reinit = _head_to_reinit(config, layers, pretrained, fresh)
  variables = fresh if pretrained is None else _merge(fresh, pretrained, layers, reinit)
  labels = freezing.label_tree(variables['params'], spec.rules)
  logging.info('Case %s: %d layers in training mode: %s', spec.name, len(trainable_names),
               ', '.join(trainable_names))
  tx = freezing.make_optimizer(optax.adam(config.learning_rate), labels)
  state = _new_state(variables, tx, config.seed)
  trainable = jax.tree.map(lambda l: l == freezing.TRAINABLE, labels)
  return Case(n, model, layers, trainable_names, variables, labels, trainable, tx, state,
              reinit, spec)


@dataclasses.dataclass
class Plan:
  """A case made and compiled, with its costs, before any case trains."""
  case: Case
  train_c: Any
  eval_c: Any
  compile_s: float
  train_cost: dict
  eval_cost: dict
  eval_batch: int
  eval_compile_s: float  # the shared eval step's compilation: reported once, not per case
  cached: Any = None  # prefix_cache.Compiled when the case trains on cached prefix activations


def _plan_case(config, n, pretrained, num_classes, eval_batch, mesh=None):
  interrupt.check(f'before compiling case {n}')
  case = make_case(config, n, num_classes, pretrained)
  train_c, eval_c, compile_s = compile_steps(case.model, case.tx, case.trainable, case.state,
                                             config, eval_batch, mesh)
  eval_s = eval_compile_s(case.model, case.state, config, eval_batch, mesh)
  devices = mesh.num_devices if mesh is not None else 1
  train_cost = accounting.xla_costs(train_c, devices)
  eval_cost = accounting.xla_costs(eval_c, devices)
  cached = None
  cut = prefix_cache.cut_index(case.model, case.trainable_names,
                               freezing.trainable_params_by_layer(case.labels))
  if config.prefix_cache and cut > 0 and jax.process_count() == 1:
    cached = prefix_cache.compile_steps(case.model, case.tx, case.trainable, case.state, config,
                                        eval_batch, cut, mesh)
  counting = accounting.counting_model(case.model)
  if counting is not None:  # the FLOPs of the same steps with slices depthwise (compiled only)
    twin_train, twin_eval, twin_s = compile_steps(counting, case.tx, case.trainable, case.state,
                                                  config, eval_batch, mesh)
    compile_s += twin_s
    eval_s += eval_compile_s(counting, case.state, config, eval_batch, mesh)
    train_cost = accounting.with_counted_flops(train_cost, accounting.xla_costs(twin_train, devices))
    eval_cost = accounting.with_counted_flops(eval_cost, accounting.xla_costs(twin_eval, devices))
    if cached is not None:
      prefix_cache.count_on(cached, prefix_cache.compile_steps(
          counting, case.tx, case.trainable, case.state, config, eval_batch, cut, mesh))
  case.state = None  # built again when the case trains: no case holds memory while waiting
  return Plan(case, train_c, eval_c, compile_s, train_cost, eval_cost, eval_batch, eval_s, cached)


def _check_memory(config, plans):
  """Fails before training when a compiled step needs more memory than the device has."""
  available = resume.available_memory_bytes()
  for p in plans:
    need = p.train_cost.get('memory_bytes')
    if need and need > available:
      fixed = p.train_cost['argument_bytes']
      per_example = max(need - fixed, 1) / config.batch_size
      fits = int(max(available * 0.9 - fixed, 0) // per_example)
      raise MemoryError(
          f'Case {p.case.n} needs {need / 2**20:.0f} MiB for its train step at '
          f'config.batch_size={config.batch_size} (XLA memory analysis), but only '
          f'{available / 2**20:.0f} MiB are available. Try --config.batch_size={max(fits, 1)}'
          + ('' if fits else ' or a smaller model/image size') + '.')


def _run_case(config, plan, target, target_test, metrics, workdir, mesh=None):
  case = plan.case
  n, model, layers, trainable_names = case.n, case.model, case.layers, case.trainable_names
  variables, labels, reinit = case.variables, case.labels, case.reinit
  state = _new_state(variables, case.tx, config.seed, mesh)
  train_cost, eval_cost, eval_batch = plan.train_cost, plan.eval_cost, plan.eval_batch
  per_layer = accounting.layer_macs(model, variables, (config.image_size, config.image_size,
                                                       config.channels))
  analytic = accounting.analytic_train_macs(per_layer, freezing.trainable_params_by_layer(labels))
  prep = _prep_fn(config, config.target_dataset)
  ckpt = None if config.dry_run else resume.Checkpoints(resume.case_dir(workdir, n))
  cached, cache = plan.cached, None
  train_c, eval_c, train_arrays, test_arrays = plan.train_c, plan.eval_c, target, target_test
  try:
    if cached is not None:  # frozen prefix once per example; train and evaluate the suffix
      directory = os.path.join(workdir, f'cache_case_{freezing.case_slug(n)}')
      cache = prefix_cache.build(cached, state, (target, target_test), batch=config.batch_size,
                                 prep=prep, directory=directory, mesh=mesh)
      train_c, eval_c, train_arrays, test_arrays = cached.train, cached.eval, cache.train, cache.test
      prep = prefix_cache.identity_prep
    state, steps, wall, diverged_at = _fit(
        state, train_c, train_arrays, config, prep=prep, epochs=config.epochs,
        desc=f'case {n}', metrics=metrics, case=n, ckpt=ckpt, mesh=mesh)
    if diverged_at is None:
      acc, loss = _evaluate(eval_c, state, test_arrays, config, prep, mesh)
      status = 'ok'
    else:
      acc = loss = None
      status = 'diverged'
  finally:
    if cache is not None:
      cache.delete()
  kinds = {l.name: l.kind for l in layers}
  trainable_params, total_params = accounting.param_counts(variables, labels)
  flops_step = train_cost['flops']
  flops_ex = flops_step / config.batch_size
  analytic_train = 2 * analytic['total']
  eval_calls = -(-len(target_test) // eval_batch)
  if cached is None:
    compute_flops = flops_step * steps + eval_cost['flops'] * eval_calls
  else:
    compute_flops = (cached.prefix_cost['flops'] * cache.batches
                     + cached.train_cost['flops'] * steps + cached.eval_cost['flops'] * eval_calls)
  wall_s = wall + (cache.seconds if cached else 0.0)
  record = dict(
      case=case.spec.name, status=status, diverged_at_step=diverged_at,
      trainable_layers=len(trainable_names),
      trainable_layer_names=list(trainable_names),
      first_trainable_layer=trainable_names[0], last_trainable_layer=trainable_names[-1],
      trainable_conv_layers=sum(kinds[t] == 'Conv2D' for t in trainable_names),
      trainable_depthwise_layers=sum(kinds[t] == 'DepthwiseConv2D' for t in trainable_names),
      # The depthwise formulation that ran, and the one whose compiled count the FLOP fields are.
      depthwise_impl=accounting.depthwise_impls(model)[0],
      depthwise_impl_counted=accounting.depthwise_impls(model)[1],
      reinitialised_layers=sorted(reinit),
      trainable_params=trainable_params, total_params=total_params,
      test_accuracy=acc, test_loss=loss, test_examples=len(target_test),
      steps=steps, batch_size=config.batch_size,
      train_flops_per_step=flops_step, train_flops_per_example=flops_ex,
      forward_flops_per_example=eval_cost['flops'] / eval_batch,
      analytic_train_flops_per_example=analytic_train,
      analytic_forward_flops_per_example=2 * analytic['forward'],
      analytic_macs_per_example=analytic,
      xla_to_analytic_train_flops=flops_ex / analytic_train if analytic_train else None,
      energy_per_example_j=accounting.energy_j(flops_ex, config.e_mac_j),
      energy_per_step_j=accounting.energy_j(flops_step, config.e_mac_j),
      energy_total_j=accounting.energy_j(flops_step, config.e_mac_j) * steps,
      thesis_energy_per_example_j=analytic['trainable_forward'] * config.e_mac_j,
      train_memory_bytes=train_cost.get('memory_bytes'),
      train_memory=train_cost, eval_cost=eval_cost,
      # With the cache, compile_s includes compiling the prefix and suffix steps and wall_s
      # filling the cache (both logged apart below).
      compile_s=plan.compile_s + (cached.compile_s if cached else 0.0),
      wall_s=wall_s,
      examples_per_s=steps * config.batch_size / wall_s if wall_s > 0 else None,
      prefix_cache=cached is not None,
      prefix_cache_cut_layer=cached.cut_layer if cached else None,
      cached_train_flops_per_step=cached.train_cost['flops'] if cached else None,
      prefix_flops_total=cached.prefix_cost['flops'] * cache.batches if cached else 0.0,
      compute_flops_total=compute_flops,
      prefix_cache_bytes=cache.nbytes if cached else 0,
      prefix_cache_location=cache.location if cached else None,
  )
  if cached:
    logging.info('Case %s: prefix cache up to %s: %.2f s to compile, %.2f s to fill, %.2f s of '
                 'training', n, cached.cut_layer, cached.compile_s, cache.seconds, wall)
  logging.info('Case %s: accuracy %s, train %.4g FLOPs/example, %.4g J/example, memory %s B',
               n, acc, flops_ex, record['energy_per_example_j'], record['train_memory_bytes'])
  if ckpt is not None:
    ckpt.close()
  return record


def _dry_run_config(config):
  """One step per case on mock data with random weights; batches and accounting unchanged
  (the mock splits hold at least a train and an eval batch)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.epochs = 1
    c.steps_per_epoch = 1
  return c


def train_and_evaluate(config, workdir):
  """Runs the whole experiment of `config`, writing its outputs into `workdir`.

  Checks everything that can fail before training (config values, workdir, data, cases,
  compiled memory), then trains the cases. Rerun with the same workdir, it skips finished
  cases and resumes the interrupted one from its checkpoint. Returns the summary dict (also
  written to workdir/summary.json). The workdir is locked for the run: a second run on it fails.
  After SIGINT/SIGTERM (with interrupt.install()), it checkpoints and raises interrupt.Interrupted.
  """
  checks.validate(config)
  with workdir_lock.held(workdir, config.process_id):
    interrupt.check('before starting')
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir):
  run_config = _dry_run_config(config) if config.dry_run else config
  parallel.maybe_initialize(config)
  mesh = parallel.Mesh() if config.data_parallel else None
  if mesh is not None:
    mesh.check_batch('batch_size', run_config.batch_size)
  identity = data_identity(run_config)
  resume.prepare_workdir(workdir, config)
  resume.check_data(workdir, identity)
  target = _load(run_config, 'target', 'train')
  target_test = _load(run_config, 'target', 'test')
  checks.check_data(run_config, target)
  # What makes the numbers: records and checkpoints of another fingerprint are never reused.
  fingerprint = resume.run_fingerprint(config, data_identity=identity)
  resume.discard_stale_checkpoints(workdir, fingerprint)
  num_classes = target.num_classes
  layers = _model(run_config, num_classes).keras_layers()
  checks.validate_cases(run_config, layers)  # every case, before hours go into the first
  done = {n: resume.load_done(workdir, n, fingerprint) for n in run_config.cases}
  resumable = {}
  for n in ['pretrain'] + [n for n in run_config.cases if done[n] is None]:
    d = resume.case_dir(workdir, n)
    if os.path.isdir(d):
      step = resume.Checkpoints(d).latest_step()
      if step is not None:
        resumable[n] = step
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  pretrain_done = config.pretrained != 'source' or os.path.exists(os.path.join(
      config.cache_dir, 'pretrained', _pretrain_key(run_config, identity['source']),
      'pretrain.json'))
  resume.filter_metrics(metrics_path, {n for n in done if done[n]} | (
      {'pretrain'} if pretrain_done else set()), resumable)
  metrics = report.MetricsWriter(metrics_path)
  try:
    t0 = time.perf_counter()
    pretrained, pretrain_info = _pretrained_variables(run_config, metrics, workdir, identity,
                                                      mesh)
    eval_batch = _eval_batch(run_config, target_test, mesh)
    plans = {n: _plan_case(run_config, n, pretrained, num_classes, eval_batch, mesh)
             for n in run_config.cases if done[n] is None}
    _check_memory(run_config, plans.values())
    cases = []
    summary = dict(
        name=config.name, dry_run=bool(config.dry_run), model=config.model,
        source_dataset=config.source_dataset if config.pretrained == 'source' else None,
        target_dataset=config.target_dataset, num_classes=num_classes,
        train_examples=len(target), test_examples=len(target_test), data=identity,
        pretraining=pretrain_info, e_mac_j=config.e_mac_j, seed=config.seed,
        eval_compile_s=max((p.eval_compile_s for p in plans.values()), default=None),
        fingerprint=fingerprint, config=config.to_dict(), environment=_environment(config),
        cases=cases)
    for n in run_config.cases:
      if done[n] is None:
        interrupt.check(f'before case {n}')
        done[n] = _run_case(run_config, plans.pop(n), target, target_test, metrics, workdir,
                            mesh)
        resume.save_done(workdir, n, done[n], fingerprint)
      else:
        logging.info('Case %s finished in an earlier run: kept.', n)
      cases.append(done[n])
      summary['wall_s'] = time.perf_counter() - t0
      _write_outputs(workdir, summary)
  finally:
    metrics.close()
  return summary


def _write_outputs(workdir, summary):
  report.write_json(os.path.join(workdir, 'summary.json'), summary)
  report.write_csv(os.path.join(workdir, 'results.csv'), summary['cases'])
  cfg = summary['config']

  def named(dataset, classes):
    return f"{dataset} {','.join(map(str, classes))}" if classes else dataset

  title = (f"{summary['name']}: {summary['model']} "
           + (f"{named(summary['source_dataset'], cfg['source_classes'])} -> "
              if summary['source_dataset'] else '')
           + named(summary['target_dataset'], cfg['target_classes'])
           + (' (dry run)' if summary['dry_run'] else ''))
  report.write_figure(os.path.join(workdir, 'figure.png'), summary['cases'], title)
