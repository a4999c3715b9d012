"""Prefix-cache benchmark: one head-only case end to end, with and without the cache.

  python -m benchmarks.prefix [--quick] [--models=small_cnn,efficientnet_b0] [--out=FILE.json]

(python -m benchmarks.step runs it too, after its step timings.)
"""

import argparse
import sys
import tempfile
import time
from unittest import mock

import jax
import numpy as np

from tljax.data import datasets
from tljax.data import inputs
from tljax.sweep import runner
from tljax.training import compiled

# Train/test examples of the synthetic target per model (full run, --quick run).
SIZES = {'small_cnn': {'full': (10000, 2000), 'quick': (3000, 600)},
         'efficientnet_b0': {'full': (1280, 256), 'quick': None}}
EPOCHS = 10
HEAD_CASE = {'model': 1, 'base': 0}  # the head-only case under each counting


def synthetic(spec, n, split, seed):
  """Random images of the spec's shape (uint8 for EfficientNet, float in [0, 1] otherwise)."""
  rng = np.random.default_rng(seed)
  shape = (n, spec['image_size'], spec['image_size'], spec['channels'])
  if spec['model'].startswith('efficientnet'):
    images = rng.integers(0, 256, shape, np.uint8)
  else:
    images = rng.uniform(size=shape).astype(np.float32)
  labels = rng.integers(0, spec['num_classes'], n).astype(np.int32)
  return datasets.Arrays(images, labels, spec['num_classes'], 'synthetic', split)


def run_case(config, spec, n_train, n_test, use_cache):
  """train_and_evaluate on synthetic data; the case's own compile and wall seconds."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.pretrained = 'none'
    c.cases = (HEAD_CASE[spec['counting']],)
    c.epochs = EPOCHS
    c.prefix_cache = use_cache
    c.prefix_cache_always = use_cache  # the cache itself, whatever the cost model would say
    c.progress = False
    c.checkpoint_every_steps = 0
  splits = {'train': synthetic(spec, n_train, 'train', 1), 'test': synthetic(spec, n_test, 'test', 2)}
  # Both runs start cold: no compiled step of an earlier run is reused.
  jax.clear_caches()
  compiled._EVAL_CACHE.clear()  # pylint: disable=protected-access
  compiled._INIT_CACHE.clear()  # pylint: disable=protected-access
  with tempfile.TemporaryDirectory() as workdir, mock.patch.object(
      inputs, 'load', lambda config, role, split: splits[split]):
    t0 = time.perf_counter()
    summary = runner.train_and_evaluate(c, workdir)
    run_s = time.perf_counter() - t0
  case = summary['runs'][0]  # the one (case, seed) run
  return dict(prefix_cache=case['prefix_cache'], cut_layer=case['prefix_cache_cut_layer'],
              compile_s=case['compile_s'], wall_s=case['wall_s'],
              end_to_end_s=case['compile_s'] + case['wall_s'], run_s=run_s,
              test_accuracy=case['test_accuracy'], test_loss=case['test_loss'],
              steps=case['steps'], cache_bytes=case['prefix_cache_bytes'],
              compute_flops_total=case['compute_flops_total'])


def bench(config, spec, quick, log=print):
  """Both runs and their quotients, or None where the model has no size for this mode."""
  sizes = SIZES.get(spec['model'], {}).get('quick' if quick else 'full')
  if sizes is None:
    return None
  n_train, n_test = sizes
  runs = {}
  for use_cache in (True, False):
    runs['cached' if use_cache else 'uncached'] = r = run_case(config, spec, n_train, n_test,
                                                               use_cache)
    log(f'  prefix cache {use_cache}: compile {r["compile_s"]:.1f} s + train '
        f'{r["wall_s"]:.1f} s')
  cached, plain = runs['cached'], runs['uncached']
  return dict(train_examples=n_train, test_examples=n_test, epochs=EPOCHS, runs=runs,
              speedup_end_to_end=plain['end_to_end_s'] / cached['end_to_end_s'],
              speedup_training=plain['wall_s'] / cached['wall_s'],
              accuracy_difference=abs(cached['test_accuracy'] - plain['test_accuracy']),
              loss_difference=abs(cached['test_loss'] - plain['test_loss']))


def main(argv=None):
  from benchmarks import step  # pylint: disable=g-import-not-at-top
  from benchmarks import tables  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog='python -m benchmarks.prefix',
                              description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='Fewer examples; small CNN only.')
  p.add_argument('--models', default='small_cnn,efficientnet_b0')
  p.add_argument('--out', help='JSON file to write.')
  args = p.parse_args(argv)
  results = {}
  for spec in step.model_specs(args.quick, tuple(m for m in args.models.split(',') if m)):
    print(f'{spec["model"]}:', file=sys.stderr)
    r = bench(step.config_for(spec), spec, args.quick, log=lambda m: print(m, file=sys.stderr))
    if r is not None:
      results[spec['model']] = r
      print(f'{spec["model"]}\n' + tables.prefix_table(r) + '\n')
  if args.out:
    from tljax.runtime import report  # pylint: disable=g-import-not-at-top
    report.write_json(args.out, results)
    print(f'written to {args.out}')


if __name__ == '__main__':
  main()
