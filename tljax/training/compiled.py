"""A config's model, its initial variables and train state, and the compiled train/eval steps."""

import contextlib
import functools
import threading
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp

from tljax.accounting import costs
from tljax import models
from tljax.runtime import backend
from tljax.runtime import parallel
from tljax.training.steps import TrainState, eval_step, train_step

# Compiled once per process and shape, shared by every case: the random initial variables
# (independent of which layers are frozen) and the evaluation step (inference mode everywhere,
# so the same program for every case), with the seconds its compilation took.
_INIT_CACHE = {}
_EVAL_CACHE = {}
# The compile pool's threads compile each shared eval step once: a lock per key.
_EVAL_LOCK, _EVAL_LOCKS = threading.Lock(), {}
_LOG = threading.local()  # .programs: where compile_step lists what it compiled (`logged`)


def model_for(config, num_classes, frozen=frozenset()):
  """The config's model for `num_classes`, the layers in `frozen` in inference mode."""
  return models.create(config.model, num_classes=num_classes, frozen=frozenset(frozen),
                       bn_momentum=config.bn_momentum, frozen_dropout=config.frozen_dropout,
                       depthwise_impl=config.depthwise_impl,
                       **models.model_fields(config.model, config))


def model_key(config):
  """The model fields (alpha, minimalistic) of the config's model, as a cache key."""
  return tuple(sorted(models.model_fields(config.model, config).items()))


def seed_of(config):
  """The seed of one run: `seed`, set per seed by with_seed, else the first of `seeds`."""
  return int(config.seed) if 'seed' in config else int(config.seeds[0])


def with_seed(config, seed):
  """`config` with the field `seed` (data order, initial head, dropout, pretraining) set."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.seed = int(seed)
  return c


def input_spec(config, batch):
  return jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, config.channels),
                              jnp.float32)


def init_variables(model, config, rng):
  """The model's random initial variables for `rng` (cached for the latest model)."""
  key = (config.model, model_key(config), model.num_classes, config.image_size, config.channels,
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


def new_state(variables, tx, seed, mesh=None):
  """A fresh train state on own copies of `variables` (the step donates its state, and the
  pretrained weights are shared by every case), replicated over `mesh` (default: one device)."""
  variables = jax.tree.map(lambda x: jnp.array(x, copy=True), variables)
  params = variables['params']
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                     rng=jax.random.fold_in(jax.random.key(seed), 1))
  return parallel.default(mesh).put_replicated(state)


class Step(NamedTuple):
  """A compiled step, its XLA costs (costs.xla_costs, the whole global step) and the
  seconds its jit, lowering and compilation took."""
  fn: Any
  cost: dict
  seconds: float


def compile_step(fn, args, shardings, config, donate=False):
  """jit(fn) with `shardings` = (in_shardings, out_shardings), lowered on the shapes of `args`
  (arrays or shape structs), compiled with the backend's options and accounted.

  The devices are those of the shardings: a data-parallel mesh's program is one device's, so
  its costs are multiplied by their count (costs.xla_costs).
  """
  t0 = time.perf_counter()
  ins, outs = shardings
  jitted = jax.jit(fn, in_shardings=ins, out_shardings=outs, donate_argnums=0 if donate else ())
  compiled = backend.compile(jitted.lower(*shapes(args)), config)
  seconds = time.perf_counter() - t0
  programs = getattr(_LOG, 'programs', None)
  if programs is not None:
    programs.append((getattr(fn, 'func', fn).__name__.strip('_'), seconds))
  devices = len(jax.tree.leaves(ins)[0].device_set)
  return Step(compiled, costs.xla_costs(compiled, devices), seconds)


@contextlib.contextmanager
def logged(programs):
  """Within it, each compile_step of this thread appends (its function's name, seconds) to the
  list `programs`."""
  before, _LOG.programs = getattr(_LOG, 'programs', None), programs
  try:
    yield programs
  finally:
    _LOG.programs = before


def shapes(tree):
  """Shapes and dtypes of `tree`'s arrays (lowering needs nothing else)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, weak_type=getattr(x, 'weak_type', False)), tree)


def train_shardings(mesh):
  """(state, images, labels) -> (state, metrics): batches split, the rest replicated."""
  return (mesh.replicated, mesh.batch, mesh.batch), (mesh.replicated, mesh.replicated)


def eval_shardings(mesh):
  """(params, batch_stats, images, labels, mask) -> sums."""
  return (mesh.replicated,) * 2 + (mesh.batch,) * 3, mesh.replicated


class Steps(NamedTuple):
  """A case's compiled train step (with the seconds it took) and the shared eval step."""
  train: Any
  eval: Any
  compile_s: float
  train_cost: dict
  eval_cost: dict


def compile_steps(model, tx, trainable, state, config, eval_batch, mesh=None, batch=None):
  """Compiles the train step of this case at `batch` (default config.batch_size) and (once per
  shape) the eval step, over `mesh` (default: one device; parallel.Mesh.on(
  costs.counting_device()) for the counting twin).

  The eval step's compilation is shared by every case and not in `compile_s`
  (`eval_compile_s`). The FLOP count is read from exactly these compiled executables, and
  training runs exactly them: batch sharded over the mesh's devices, state replicated.
  """
  mesh = parallel.default(mesh)
  train = compile_train(model, tx, trainable, state, config, batch or config.batch_size, mesh)
  ev = _eval_compiled(model, state, config, eval_batch, mesh)
  return Steps(train.fn, ev.fn, train.seconds, train.cost, ev.cost)


def compile_train(model, tx, trainable, state, config, batch, mesh=None):
  """The train step of a case at `batch` (a Step), over `mesh` (default: one device), its state
  donated as in training."""
  mesh = parallel.default(mesh)
  return compile_step(
      functools.partial(train_step, model=model, tx=tx, trainable=trainable),
      (state, input_spec(config, batch), jax.ShapeDtypeStruct((batch,), jnp.int32)),
      train_shardings(mesh), config, donate=True)


def eval_compile_s(model, state, config, eval_batch, mesh=None):
  """Seconds it took to compile the eval step that `compile_steps` gave for these arguments."""
  return compile_eval(model, state, config, eval_batch, mesh).seconds


def compile_eval(model, state, config, eval_batch, mesh=None):
  """The eval step that `compile_steps` gives for these arguments (a Step), compiled once per
  process, shape and mesh."""
  return _eval_compiled(model, state, config, eval_batch, parallel.default(mesh))


def _eval_compiled(model, state, config, eval_batch, mesh):
  """The eval step (a Step), compiled once per process, shape and mesh."""
  options = backend.compiler_options(config)
  key = (config.model, model_key(config), model.num_classes, config.image_size, config.channels,
         eval_batch,
         costs.depthwise_impls(model)[0], jax.default_backend(),
         tuple(str(d) for d in mesh.devices), tuple(sorted(options.items())))
  with _EVAL_LOCK:
    lock = _EVAL_LOCKS.setdefault(key, threading.Lock())
  with lock:
    if key not in _EVAL_CACHE:
      _EVAL_CACHE[key] = compile_step(
          functools.partial(eval_step, model=model.clone(frozen=frozenset())),
          (state.params, state.batch_stats, input_spec(config, eval_batch),
           jax.ShapeDtypeStruct((eval_batch,), jnp.int32),
           jax.ShapeDtypeStruct((eval_batch,), jnp.float32)), eval_shardings(mesh), config)
    return _EVAL_CACHE[key]
