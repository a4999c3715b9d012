"""The step benchmark's edge rows: MobileNetV2 (alpha 0.35 at 128, 1.0 at 224) and ResNet50 at
224, head / top / all, tljax against the peers (python -m benchmarks.edge_step)."""

import argparse
import os
import sys

from benchmarks import step
from benchmarks import tables
from benchmarks import timing as timing_lib

# (model, fields, image size, 'top' = the head and the last this many base layers): MobileNetV2's
# top is Conv_1, Conv_1_bn, out_relu; ResNet50's its last block (conv5_block3, 10 layers).
EDGE = (('mobilenet_v2', {'alpha': 0.35}, 128, 3), ('mobilenet_v2', {'alpha': 1.0}, 224, 3),
        ('resnet50', {}, 224, 10))
NAMES = {'mobilenet_v2_0.35_128': 0, 'mobilenet_v2_1.0_224': 1, 'resnet50_224': 2}


def specs(quick, which=tuple(NAMES), batch_size=32, gpu=False):
  """step.run's specs of the edge rows named in `which` (NAMES)."""
  from tljax import models  # pylint: disable=g-import-not-at-top
  mode = 'quick' if quick else 'full'
  out = []
  for key in which:
    model, fields, size, top = EDGE[NAMES[key]]
    n_base = sum(l.base for l in models.create(model, num_classes=1, **fields).keras_layers())
    out.append(dict(model=model, fields=dict(fields), image_size=size, channels=3,
                    batch_size=batch_size, num_classes=100, counting='base',
                    cases=(0, top, n_base), top=top, n_base=n_base, impls=(None,),
                    timing=dict(step.GPU_TIMING if gpu else step.TIMING[mode]['efficientnet_b0']),
                    input='uint8_32', input_timing=step.TIMING[mode]['input']))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m benchmarks.edge_step', description=__doc__)
  p.add_argument('--out', help='JSON file to write.')
  p.add_argument('--quick', action='store_true', help='Fewer timed steps.')
  p.add_argument('--rows', default=','.join(NAMES), help=f'Comma list of {", ".join(NAMES)}.')
  p.add_argument('--peers', default=','.join(step.PEERS), help="Comma list; '' for none.")
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--wait_idle', type=float, default=0.0)
  args = p.parse_args(argv)
  rows = tuple(r for r in args.rows.split(',') if r)
  bad = [r for r in rows if r not in NAMES]
  if bad:
    sys.exit(f'benchmarks.edge_step: unknown rows {bad}; known: {list(NAMES)}')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import jax  # pylint: disable=g-import-not-at-top
  result = step.run(args.quick, peers=tuple(x for x in args.peers.split(',') if x),
                    specs=specs(args.quick, rows, args.batch_size, jax.default_backend() == 'gpu'),
                    log=timing_lib.stderr, wait_idle=args.wait_idle, prefix=False,
                    partial=(lambda r: step._write(args.out, r)) if args.out else None)  # pylint: disable=protected-access
  for m in result['models']:
    print()
    print(tables.step_tables(m))
  if args.out:
    step._write(args.out, result)  # pylint: disable=protected-access
    print(f'\nwritten to {args.out}')
  return result


if __name__ == '__main__':
  main()
