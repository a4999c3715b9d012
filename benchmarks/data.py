"""Data benchmark: image folders prepared for a model (time, peak memory, reuse) and input speed.

  python -m benchmarks.data [--quick] [--dir=DIR] [--out=FILE.json]

Generates JPEG folders (50,000 + 10,000 at 32x32, 5,000 + 1,000 at 224x224; --quick: a tenth),
then for each, in a fresh process: the time to prepare it for its model, the peak resident
memory above the process's baseline (Linux VmHWM, reset after the imports), the time of a
second run (the prepared cache reused), and the input pipeline's examples/s beside the train
step's. Prints a table.
"""

import argparse
import concurrent.futures
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# name -> (train images, test images, side, model, image side the model takes)
FOLDERS = {
    'cifar_sized_32': (50_000, 10_000, 32, 'small_cnn', 32),
    'photo_sized_224': (5_000, 1_000, 224, 'efficientnet_b0', 224),
}
CLASSES = 10


def _image(rng, label, side):
  """A class-dependent colour pattern plus noise (uint8 HxWx3): JPEG-sized like real photos."""
  y, x = np.mgrid[0:side, 0:side] / side
  angle = np.pi * label / CLASSES
  wave = np.sin(2 * np.pi * (3 + label % 4) * (x * np.cos(angle) + y * np.sin(angle)))
  colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
  img = colour * (0.6 + 0.4 * wave[..., None]) + rng.normal(0, 24, (side, side, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def _write_class(root, split, label, count, side, seed):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([seed, label, split == 'test'])
  d = os.path.join(root, split, f'class {label}')
  os.makedirs(d, exist_ok=True)
  for i in range(count):
    Image.fromarray(_image(rng, label, side)).save(os.path.join(d, f'{i:06d}.jpg'), quality=90)


def make_folder(root, n_train, n_test, side, seed=0, classes=CLASSES):
  """Writes root/{train,test}/class <k>/NNNNNN.jpg (n per split spread over `classes`)."""
  jobs = [(split, label, n // classes + (label < n % classes))
          for split, n in (('train', n_train), ('test', n_test)) for label in range(classes)]
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    list(pool.map(lambda j: _write_class(root, *j, side, seed), jobs))
  return root


def _rss_bytes(field):
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  return 0


def _reset_peak():
  """Resets VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def measure(root, model, image_size, cache_dir, input_seconds=3.0):
  """In this process: prepare (or reuse) both splits of `root` for `model`; JSON-able figures."""
  from tljax.data import datasets  # pylint: disable=g-import-not-at-top
  from tljax import models  # pylint: disable=g-import-not-at-top
  channels = models.default_input_shape(model)[-1]
  model_input = datasets.ModelInput(image_size, channels, cache_dir)
  _reset_peak()
  base = _rss_bytes('VmRSS')
  t0 = time.perf_counter()
  splits = [datasets.load('image_folder', s, root=root, model_input=model_input)
            for s in ('train', 'test')]
  seconds = time.perf_counter() - t0
  # The kernel folds per-thread RSS counts in lazily (up to 64 pages each): never below 0.
  peak = max(_rss_bytes('VmHWM'), base)
  prepared = sum(a.images.nbytes for a in splits)
  prep = functools.partial(datasets.preprocess, image_size=image_size, channels=channels,
                           pixel_scale=models.pixel_scale(model))
  batch = min(64 if model == 'small_cnn' else 32, len(splits[0]))
  t1, n, epoch = time.perf_counter(), 0, 0
  while time.perf_counter() - t1 < input_seconds and epoch < 100:  # shuffled epochs, as training reads them
    for images, _ in datasets.prefetch(datasets.train_batches(splits[0], batch, seed=0, epoch=epoch,
                                                      prep=prep)):
      n += len(images)
    epoch += 1
  pipeline = n / (time.perf_counter() - t1)
  return dict(seconds=seconds, peak_above_baseline_bytes=peak - base, prepared_bytes=prepared,
              examples=sum(len(a) for a in splits), input_examples_per_s=pipeline,
              input_batch=batch)


def _measure_in_child(root, model, image_size, cache_dir):
  code = ('import json,sys; from benchmarks import data as b; '
          'print("RESULT " + json.dumps(b.measure(*sys.argv[1:3], int(sys.argv[3]), sys.argv[4])))')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', code, root, model, str(image_size), cache_dir],
                       capture_output=True, text=True, env=env, check=False)
  for line in out.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[7:])
  raise RuntimeError(f'measuring {root} failed:\n{out.stderr[-3000:]}')


def _train_step_rate(model, image_size):
  """Examples/s of tljax's fastest train step of `model` that reads images (benchmarks.step)."""
  from benchmarks import step as bench  # pylint: disable=g-import-not-at-top
  spec = next(s for s in bench.model_specs(quick=True, models=(model,)))
  spec = dict(spec, image_size=image_size)
  rates = {}
  for n in spec['cases'][:2]:
    rates[n] = bench.time_tljax_case(spec, n, log=lambda *a: None)['examples_per_s']
  best = max(rates, key=rates.get)
  return best, rates[best]


def run(quick, directory, log=print):
  results = {}
  for name, (n_train, n_test, side, model, size) in FOLDERS.items():
    if quick:
      n_train, n_test = n_train // 10, n_test // 10
    root = os.path.join(directory, name)
    if not os.path.isdir(root):
      t0 = time.perf_counter()
      make_folder(root, n_train, n_test, side)
      log(f'{name}: wrote {n_train} + {n_test} JPEGs at {side}x{side} in '
          f'{time.perf_counter() - t0:.1f} s')
    cache = os.path.join(directory, f'cache_{name}')
    first = _measure_in_child(root, model, size, cache)
    second = _measure_in_child(root, model, size, cache)
    case, step = _train_step_rate(model, size)
    results[name] = dict(train=n_train, test=n_test, side=side, model=model, first=first,
                         second=second, train_step_case=case, train_step_examples_per_s=step)
    log(format_row(name, results[name]))
  return results


HEADER = ('| folder | model | images | prepare s | peak MiB above baseline | prepared MiB | '
          'peak / prepared | second run s | input ex/s | fastest train step ex/s (case) | '
          'input / step |\n|---|---|---|---|---|---|---|---|---|---|---|')


def format_row(name, r):
  f, s = r['first'], r['second']
  mib = lambda b: b / 2**20
  return (f"| {name} | {r['model']} | {r['train']:,} + {r['test']:,} | {f['seconds']:.1f} | "
          f"{mib(f['peak_above_baseline_bytes']):.0f} | {mib(f['prepared_bytes']):.0f} | "
          f"{f['peak_above_baseline_bytes'] / f['prepared_bytes']:.2f} | {s['seconds']:.2f} | "
          f"{f['input_examples_per_s']:,.0f} | {r['train_step_examples_per_s']:,.0f} "
          f"({r['train_step_case']}) | "
          f"{f['input_examples_per_s'] / r['train_step_examples_per_s']:.1f}x |")


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m benchmarks.data', description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true', help='a tenth of the images')
  p.add_argument('--dir', default='', help='where the folders go (default: a temporary dir)')
  p.add_argument('--out', default='', help='also write the figures as JSON here')
  args = p.parse_args(argv)
  directory = args.dir or tempfile.mkdtemp(prefix='tljax_bench_data_')
  results = run(args.quick, directory, log=lambda m: print(m, file=sys.stderr))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)
  print(HEADER)
  for name, r in results.items():
    print(format_row(name, r))


if __name__ == '__main__':
  main()
