"""A config's model, its initial variables and train state, and the compiled train/eval steps."""

import functools
import time

import flax
import jax
import jax.numpy as jnp

from tljax import accounting
from tljax import backend
from tljax import models
from tljax.steps import TrainState, eval_step, train_step

# Compiled once per process and shape, shared by every case: the random initial variables
# (independent of which layers are frozen) and the evaluation step (inference mode everywhere,
# so the same program for every case), with the seconds its compilation took.
_INIT_CACHE = {}
_EVAL_CACHE = {}


def model_for(config, num_classes, frozen=frozenset()):
  """The config's model for `num_classes`, the layers in `frozen` in inference mode."""
  return models.create(config.model, num_classes=num_classes, frozen=frozenset(frozen),
                       bn_momentum=config.bn_momentum, frozen_dropout=config.frozen_dropout,
                       depthwise_impl=config.depthwise_impl)


def seed_of(config):
  """The seed of one run: `seed`, set per seed by sweep.seed_config, else the first of `seeds`."""
  return int(config.seed) if 'seed' in config else int(config.seeds[0])


def input_spec(config, batch):
  return jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, config.channels),
                              jnp.float32)


def init_variables(model, config, rng):
  """The model's random initial variables for `rng` (cached for the latest model)."""
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


def new_state(variables, tx, seed, mesh=None):
  """A fresh train state on own copies of `variables` (the step donates its state, and the
  pretrained weights are shared by every case)."""
  variables = jax.tree.map(lambda x: jnp.array(x, copy=True), variables)
  params = variables['params']
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                     rng=jax.random.fold_in(jax.random.key(seed), 1))
  return mesh.put_replicated(state) if mesh is not None else state


def compile_steps(model, tx, trainable, state, config, eval_batch, mesh=None, batch=None,
                  device=None):
  """Compiles the train step of this case at `batch` (default config.batch_size) and (once per
  shape) the eval step; for `device` (e.g. accounting.counting_device()) instead of the default
  one when it is given (then without a mesh).

  Returns (train, eval, seconds to compile the train step). The eval step's compilation is
  shared by every case and not in those seconds (`eval_compile_s`). The FLOP count is read
  from exactly these compiled executables, and training runs exactly them. With a
  `parallel.Mesh`, both run data-parallel: batch sharded over the devices, state replicated.
  """
  batch = batch or config.batch_size
  t0 = time.perf_counter()
  shard = {}
  if mesh is not None:
    shard = dict(in_shardings=(mesh.replicated, mesh.batch, mesh.batch),
                 out_shardings=(mesh.replicated, mesh.replicated))
  if device is not None:
    state = on_device(state, device)
    shard = dict(in_shardings=jax.sharding.SingleDeviceSharding(device))
  train_jit = jax.jit(functools.partial(train_step, model=model, tx=tx, trainable=trainable),
                      donate_argnums=0, **shard)
  train_c = backend.compile(train_jit.lower(state, input_spec(config, batch),
                                            jax.ShapeDtypeStruct((batch,), jnp.int32)),
                            config)
  train_s = time.perf_counter() - t0
  return train_c, _eval_compiled(model, state, config, eval_batch, mesh, device)[0], train_s


def on_device(tree, device):
  """Shapes and dtypes of `tree`'s arrays, placed on `device` (for lowering only)."""
  sharding = jax.sharding.SingleDeviceSharding(device)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def eval_compile_s(model, state, config, eval_batch, mesh=None, device=None):
  """Seconds it took to compile the eval step that `compile_steps` gave for these arguments."""
  return _eval_compiled(model, state, config, eval_batch, mesh, device)[1]


def _eval_compiled(model, state, config, eval_batch, mesh=None, device=None):
  """(eval step, seconds its compilation took), compiled once per process and shape."""
  options = backend.compiler_options(config)
  key = (config.model, model.num_classes, config.image_size, config.channels, eval_batch,
         accounting.depthwise_impls(model)[0], jax.default_backend(), str(device),
         mesh is not None and mesh.num_devices, tuple(sorted(options.items())))
  if key not in _EVAL_CACHE:
    t0 = time.perf_counter()
    eval_model = model.clone(frozen=frozenset())
    shard = {}
    if mesh is not None:
      shard = dict(in_shardings=(mesh.replicated,) * 2 + (mesh.batch,) * 3,
                   out_shardings=mesh.replicated)
    if device is not None:
      state = on_device(state, device)
      shard = dict(in_shardings=jax.sharding.SingleDeviceSharding(device))
    eval_jit = jax.jit(functools.partial(eval_step, model=eval_model), **shard)
    compiled = backend.compile(eval_jit.lower(
        state.params, state.batch_stats, input_spec(config, eval_batch),
        jax.ShapeDtypeStruct((eval_batch,), jnp.int32),
        jax.ShapeDtypeStruct((eval_batch,), jnp.float32)), config)
    _EVAL_CACHE[key] = (compiled, time.perf_counter() - t0)
  return _EVAL_CACHE[key]
