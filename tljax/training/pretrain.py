"""The weights every case starts from: source pretraining (cached per pretraining seed), ImageNet
or none."""

import hashlib
import json
import os
import shutil

from absl import logging
import jax
import optax
import orbax.checkpoint as ocp

from tljax.config import checks
from tljax.data import inputs
from tljax.runtime import parallel
from tljax.runtime import report
from tljax.sweep import fingerprints
from tljax.sweep import layout
from tljax.training import checkpoints
from tljax.training import compiled
from tljax.training import fit
from tljax.training import freezing

# The fields that pretraining depends on (checks.FIELDS marks them), and the seed it trains with
# (source_seed), not the config's `seeds`: its cache key.
PRETRAIN_FIELDS = checks.PRETRAIN_FIELDS + ('seed',)


def source_seed(config, seed=None):
  """The seed of the pretraining that the runs of `seed` (default: the config's run seed) start
  from: config.pretrain_seed, or the run's own seed when it is -1."""
  seed = compiled.seed_of(config) if seed is None else int(seed)
  shared = config.get('pretrain_seed', -1)
  return seed if shared < 0 else int(shared)


def _source_config(config):
  """`config` with its run seed set to the pretraining's (data order, initial weights)."""
  seed = source_seed(config)
  return config if seed == compiled.seed_of(config) else compiled.with_seed(config, seed)


def key(config, source_identity):
  """Cache key of the pretrained model: PRETRAIN_FIELDS, the source data's identity (for a
  folder its fingerprint, not its path: a moved copy is the same data) and the tool versions
  (fingerprints.versions)."""
  fields = {f: source_seed(config) if f == 'seed' else config[f] for f in PRETRAIN_FIELDS}
  fields['source_data'] = {k: v for k, v in source_identity.items() if k != 'root'}
  fields['tools'] = fingerprints.versions()
  blob = json.dumps(fields, sort_keys=True, default=list)
  return f'{config.model}_{config.source_dataset}_' + hashlib.sha256(blob.encode()).hexdigest()[:12]


def path(config, source_identity):
  return os.path.abspath(os.path.join(config.cache_dir, 'pretrained', key(config, source_identity)))


def is_cached(config, identity):
  """Whether the variables every case of this seed starts from need no training."""
  return config.pretrained != 'source' or os.path.exists(
      os.path.join(path(config, identity['source']), 'pretrain.json'))


def run_key(config):
  """The pretraining's run name in a workdir (its checkpoints, lock and metrics)."""
  return f'pretrain_seed{source_seed(config)}'


def variables(config, metrics, workdir, identity, mesh):
  """(variables or None, info): the weights every case of this seed starts from."""
  if config.dry_run or config.pretrained == 'none':
    return None, {'source': 'random init' + (' (dry run)' if config.dry_run else '')}
  if config.pretrained == 'imagenet':
    from tljax.models import imagenet  # pylint: disable=g-import-not-at-top
    return imagenet.imagenet_variables(config.model, config.cache_dir,
                                      **imagenet.config_fields(config)), {
        'source': 'imagenet', 'model': config.model}
  return _pretrain(_source_config(config), metrics, workdir, identity['source'], mesh)


def _pretrain(config, metrics, workdir, source_identity, mesh):
  """Source pretraining with every layer trainable, cached as an orbax checkpoint.

  With several processes all of them train (data-parallel) and read the cache; process 0
  alone writes it, and the others wait until it is written.
  """
  where = path(config, source_identity)
  src = inputs.load(config, 'source', 'train')
  model = compiled.model_for(config, src.num_classes)
  init = compiled.init_variables(model, config, jax.random.key(compiled.seed_of(config)))
  cached = os.path.exists(os.path.join(where, 'pretrain.json'))
  parallel.same_on_all(f'pretraining caches (whether {where} is there)', cached)
  if cached:
    logging.info('Reusing the pretrained model in %s', where)
    with open(os.path.join(where, 'pretrain.json')) as f:
      info = dict(json.load(f), cached=True)
    return ocp.StandardCheckpointer().restore(os.path.join(where, 'variables'), init), info
  parallel.on_writer('claiming the pretraining checkpoints', layout.claim_checkpoints, workdir,
                     run_key(config), key(config, source_identity))
  state, info = _train(config, model, init, src, metrics, workdir, mesh)
  info['path'] = where
  # On the host: the replicated arrays of a multi-process mesh are whole in every process.
  out = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  parallel.on_writer('saving the pretrained model', _save, where, out, info)
  parallel.on_writer('removing the pretraining checkpoints', shutil.rmtree,
                     layout.case_dir(workdir, run_key(config)), True)
  return out, info


def _train(config, model, init, src, metrics, workdir, mesh):
  """Trains every layer on the source data; (state, info)."""
  src_test = inputs.load(config, 'source', 'test')
  labels = jax.tree.map(lambda _: freezing.TRAINABLE, init['params'])
  tx = freezing.make_optimizer(optax.adam(config.pretrain_learning_rate), labels)
  state = compiled.new_state(init, tx, compiled.seed_of(config), mesh)
  trainable = jax.tree.map(lambda _: True, init['params'])
  eval_batch = fit.eval_batch(config, src_test, mesh)
  compiled_steps = compiled.compile_steps(model, tx, trainable, state, config, eval_batch, mesh)
  compile_s = compiled_steps.compile_s + compiled.eval_compile_s(model, state, config,
                                                                 eval_batch, mesh)
  prep = inputs.prep_fn(config, config.source_dataset)
  tags = {'case': 'pretrain', 'seed': compiled.seed_of(config), 'run': run_key(config)}
  ckpt = checkpoints.Checkpoints(layout.case_dir(workdir, run_key(config)))
  try:
    state, steps, wall, diverged = fit.fit(state, fit.Loop(
        compiled_steps.train, src, config, prep=prep, epochs=config.pretrain_epochs,
        desc=f'pretrain (seed {compiled.seed_of(config)})', metrics=metrics, tags=tags,
        ckpt=ckpt, mesh=mesh))
  finally:
    ckpt.close()
  if diverged:
    raise FloatingPointError(f'Pretraining on {config.source_dataset!r} diverged at step '
                             f'{diverged}; lower config.pretrain_learning_rate.')
  acc, loss = fit.evaluate(compiled_steps.eval, state, src_test, config, prep, mesh)
  logging.info('Pretrained on %s (seed %d): test accuracy %.4f, loss %.4f',
               config.source_dataset, compiled.seed_of(config), acc, loss)
  return state, dict(dataset=config.source_dataset, classes=list(config.source_classes),
                     num_classes=src.num_classes, seed=compiled.seed_of(config), train_examples=len(src),
                     test_examples=len(src_test), epochs=config.pretrain_epochs, steps=steps,
                     wall_s=wall, compile_s=compile_s, test_accuracy=acc, test_loss=loss,
                     cached=False)


def _save(where, variables_, info):
  """Writes the pretrained variables and info atomically (a temporary dir renamed into place),
  from this process alone (process 0 of a multi-process run)."""
  ckptr = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=0, active_processes={jax.process_index()}))
  tmp = where + f'.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  ckptr.save(os.path.join(tmp, 'variables'), variables_)
  ckptr.wait_until_finished()
  report.write_json(os.path.join(tmp, 'pretrain.json'), info)
  shutil.rmtree(where, ignore_errors=True)
  os.makedirs(os.path.dirname(where), exist_ok=True)
  os.replace(tmp, where)
