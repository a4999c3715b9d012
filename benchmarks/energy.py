"""Measured training energy against tljax's energy models: the families and a MobileNetV2 sweep.

  python -m benchmarks.energy [--meter=nvml] [--parts=families,mobilenet] [--out=DIR]

Each part trains every case once (seed 0) with config.energy_meter on and the prefix cache off
(the meter then measures the step the models count), prints tljax's table (MAC energy, energy
with memory, measured energy) and the Spearman rank correlation across the cases of the measured
energy per example with each model (docs/accounting.md "Measured energy"). Parts:

* families: configs/families.py (the small CNN, digits 0-4 -> 5-9, 11 cases) with more epochs,
  so that each case trains for seconds;
* mobilenet: configs/mobilenet.py's MobileNetV2 (alpha 0.35) and case families at 96x96 on
  generated images (random weights: the energy does not depend on them; no download).

A meter that cannot be read ends the run with one line and exit status 1. The digits need no
TensorFlow (GPU images may lack it): tljax upsamples them in numpy. Writes each part's
summary.json into --out (default: a temporary directory).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from unittest import mock

import numpy as np

PARTS = ('families', 'mobilenet')
# MobileNetV2's cases (counting 'base', configs/mobilenet.py): head only, + block_16, + the
# 160-filter stage, + the 96-filter stage, everything, biases only, BatchNorm only.
MOBILENET_CASES = ('last:0', 'last:11', 'last:38', 'last:64', 'last:153', 'bias:153', 'norm:153')
MOBILENET_SIZE, MOBILENET_CLASSES = 96, 10
MOBILENET_EXAMPLES = {'train': 64 * 40, 'test': 256}


def _configs():
  try:
    from configs import families, mobilenet  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import families, mobilenet  # pylint: disable=g-import-not-at-top
  return families, mobilenet


def _metered(c, meter, workdir):
  """Fields every part shares: one seed, the meter on, the prefix cache off, no checkpoints,
  few metrics lines (each syncs the device), a fresh cache."""
  c.seeds = (0,)
  c.energy_meter = meter
  c.prefix_cache = False
  c.checkpoint_every_steps = 0
  c.log_every_steps = 100_000  # a line at each run's end only
  c.progress = False
  c.cache_dir = os.path.join(workdir, 'cache')
  return c


def families_config(meter, epochs, workdir, cases=None):
  c = _configs()[0].get_config()
  c.name = 'families_energy'
  c.epochs = epochs
  c.cases = tuple(cases or c.cases)
  return _metered(c, meter, workdir)


def mobilenet_config(meter, epochs, workdir, cases=None):
  c = _configs()[1].get_config()
  c.name = 'mobilenet_energy'
  c.pretrained = 'none'
  c.target_dataset = 'cifar10'  # its loader is replaced by generated images (_generated)
  c.target_data_dir = ''
  c.image_size = MOBILENET_SIZE
  c.cases = tuple(cases or MOBILENET_CASES)
  c.batch_size = 64
  c.epochs = epochs
  return _metered(c, meter, workdir)


def _generated(split, seed):
  """Random uint8 images at MobileNetV2's input and random labels."""
  from tljax.data import datasets  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  n = MOBILENET_EXAMPLES[split]
  images = rng.integers(0, 256, (n, MOBILENET_SIZE, MOBILENET_SIZE, 3), np.uint8)
  labels = (np.arange(n) % MOBILENET_CLASSES).astype(np.int32)
  return datasets.Arrays(images, labels, MOBILENET_CLASSES, 'generated', split)


def _patches(part):
  """What the part replaces: for MobileNetV2 the target's loader and identity (generated
  images). (The digits need no TensorFlow: datasets loads them with resize.bilinear.)"""
  from tljax.data import inputs  # pylint: disable=g-import-not-at-top
  out = []
  if part == 'mobilenet':
    splits = {s: _generated(s, i) for i, s in enumerate(('train', 'test'))}
    out += [mock.patch.object(inputs, 'load', lambda config, role, split: splits[split]),
            mock.patch.object(inputs, 'data_identity', lambda config: {'target': dict(
                dataset='generated', classes=MOBILENET_CLASSES, **MOBILENET_EXAMPLES)})]
  return out


def run_part(part, config, workdir):
  """train_and_evaluate of one part's config; (summary, seconds)."""
  from tljax.sweep import runner  # pylint: disable=g-import-not-at-top
  patches = _patches(part)
  for p in patches:
    p.start()
  try:
    t0 = time.perf_counter()
    summary = runner.train_and_evaluate(config, workdir)
    return summary, time.perf_counter() - t0
  finally:
    for p in reversed(patches):
      p.stop()


def report(part, summary, seconds):
  """The part's table and its correlations, as tljax prints them."""
  from tljax.decision import console  # pylint: disable=g-import-not-at-top
  runs = summary['runs']
  meter = runs[0].get('energy_meter') if runs else None
  idle = runs[0].get('idle_power_w') if runs else None
  head = (f'== {part}: {summary["model"]}, {len(runs)} cases, {seconds:.0f} s; meter '
          f'{meter}, idle {idle if idle is None else round(idle, 2)} W')
  lines = [head, console.table(summary)]  # the table ends with the correlations, if any
  if not summary.get('energy_rank_correlations'):
    lines.append('No rank correlation: fewer than 3 cases have a measured energy.')
  return '\n'.join(lines + [''])


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m benchmarks.energy',
                              description=__doc__.split('\n')[0])
  p.add_argument('--meter', default='auto', help="config.energy_meter: 'auto', 'nvml', 'rapl' "
                 "('off': the models alone).")
  p.add_argument('--parts', default=','.join(PARTS), help=f'Comma-separated, of {PARTS}.')
  p.add_argument('--families_epochs', type=int, default=100,
                 help='Epochs per case of the families part (21 steps each).')
  p.add_argument('--mobilenet_epochs', type=int, default=8,
                 help='Epochs per case of the MobileNetV2 part (40 steps each).')
  p.add_argument('--families_cases', default='', help='Comma-separated cases (default: '
                 "configs/families.py's 11).")
  p.add_argument('--mobilenet_cases', default='', help=f'Comma-separated cases (default: '
                 f'{",".join(MOBILENET_CASES)}).')
  p.add_argument('--out', help='Directory for each part\'s summary.json (default: temporary).')
  args = p.parse_args(argv)
  parts = [x for x in args.parts.split(',') if x]
  bad = [x for x in parts if x not in PARTS]
  if bad:
    p.error(f'--parts={args.parts}: unknown {bad}; parts are {PARTS}')
  root = tempfile.mkdtemp(prefix='tljax-energy-')
  cases = {part: [x for x in args.__dict__[f'{part}_cases'].split(',') if x] for part in PARTS}
  make = {'families': lambda w: families_config(args.meter, args.families_epochs, w,
                                                cases['families']),
          'mobilenet': lambda w: mobilenet_config(args.meter, args.mobilenet_epochs, w,
                                                  cases['mobilenet'])}
  try:
    for part in parts:
      workdir = os.path.join(root, part)
      try:
        summary, seconds = run_part(part, make[part](workdir), workdir)
      except ValueError as e:  # a meter that cannot be read, a bad flag value
        print(f'benchmarks.energy: error: {e}', file=sys.stderr)
        return 1
      print(report(part, summary, seconds), flush=True)
      if args.out:
        os.makedirs(args.out, exist_ok=True)
        shutil.copy(os.path.join(workdir, 'summary.json'),
                    os.path.join(args.out, f'{part}_summary.json'))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
