"""Where a case's train step spends its time: XLA operations ranked from a jax.profiler trace.

python -m benchmarks.profile --model=small_cnn --case=23 [--steps=10] [--top=25] [--no_xla_cpu_tuning]

Each row is one operation of the compiled step (a fusion, a convolution, a library call),
with its time per step summed over the threads that ran it and the JAX operation it came
from (HLO metadata). On XLA:CPU, operations that run inside a library's own thread pool
(Eigen convolutions) appear only partly; the step's wall time is printed for comparison.
"""

import argparse
import collections
import glob
import re
import tempfile

# Events that are not operations of the step: the executor's own spans and Python frames.
_SKIP = ('ThunkExecutor', 'PjRt', 'python', '$')


def op_names(hlo_text):
  """{instruction name: (shape, JAX op_name)} of the compiled module's instructions."""
  out = {}
  for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) [\w\-]+\((.*)$', hlo_text, re.M):
    name, shape, rest = m.groups()
    op = re.search(r'op_name="([^"]*)"', rest)
    out[name] = (shape.split('{')[0], op.group(1) if op else '')
  return out


# (substring of the JAX op or of the operation's name, the family it belongs to), first match wins.
FAMILIES = (('dwconv', 'depthwise conv'), ('depthwise', 'depthwise conv'), ('silu', 'swish'),
            ('_bn', 'BatchNorm'), ('_BN', 'BatchNorm'),
            ('batch_normalization', 'BatchNorm'), ('conv_general_dilated', 'convolution'),
            ('dot_general', 'dense'), ('dropout', 'dropout'), ('reduce_max', 'max pool'),
            ('relu', 'relu'), ('transpose_copy', 'layout transpose'), ('copy', 'copy'),
            ('se_', 'squeeze-excite'), ('adam', 'optimiser'), ('ynn_fusion', 'YNNPACK call'))


def family(name, op):
  """The family of an operation and whether it belongs to the backward pass."""
  side = 'backward' if 'transpose(jvp' in op else 'forward' if 'jvp(' in op else 'other'
  for key, fam in FAMILIES:
    if key in op or key in name:
      return fam, side
  return 'other', side


def profile_step(step, args, steps=10):
  """Runs `step(*args)` (returning args for the next call) under jax.profiler.

  Returns ({op: nanoseconds per step}, wall seconds per step).
  """
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(2):
    args = step(*args)
  jax.block_until_ready(args)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      t0 = time.perf_counter()
      for _ in range(steps):
        args = step(*args)
      jax.block_until_ready(args)
      wall = (time.perf_counter() - t0) / steps
    (path,) = glob.glob(f'{d}/**/*.xplane.pb', recursive=True)
    data = jax.profiler.ProfileData.from_file(path)
  busy = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if any(line.name.startswith(s) for s in _SKIP):
        continue
      for ev in line.events:
        if not any(s in ev.name for s in _SKIP):
          busy[ev.name] += ev.duration_ns / steps
  return busy, wall


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m benchmarks.profile', description=__doc__.split('\n')[0])
  p.add_argument('--model', default='small_cnn', help='small_cnn, efficientnet_b0 or an edge '
                 'row of benchmarks.edge_step (mobilenet_v2_0.35_128, mobilenet_v2_1.0_224, '
                 'resnet50_224)')
  p.add_argument('--case', type=int, required=True)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--top', type=int, default=25)
  p.add_argument('--no_xla_cpu_tuning', action='store_true')
  args = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import step as bench  # pylint: disable=g-import-not-at-top
  from tljax.training import case as case_lib  # pylint: disable=g-import-not-at-top
  from tljax.training import compiled  # pylint: disable=g-import-not-at-top
  from benchmarks import edge_step  # pylint: disable=g-import-not-at-top
  if args.model in edge_step.NAMES:
    spec = edge_step.specs(True, (args.model,))[0]
  elif args.model in ('small_cnn', 'efficientnet_b0'):
    spec = bench.model_specs(True, models=(args.model,))[0]
  else:
    p.error(f'unknown --model {args.model!r}')
  spec['xla_cpu_tuning'] = not args.no_xla_cpu_tuning
  config = bench.config_for(spec)
  case = case_lib.make_case(config, args.case, spec['num_classes'])
  train_c = compiled.compile_steps(case.model, case.tx, case.trainable, case.state, config,
                                   eval_batch=spec['batch_size']).train
  names = op_names(train_c.as_text())
  x, y = (jax.device_put(a) for a in bench.random_batch(spec))
  busy, wall = profile_step(lambda s, x, y: (train_c(s, x, y)[0], x, y), (case.state, x, y),
                            args.steps)
  total = sum(busy.values())
  print(f'{args.model} case {args.case}, batch {spec["batch_size"]}: {wall * 1e3:.1f} ms/step '
        f'wall, {total / 1e6:.1f} ms/step of traced operations (all threads)')
  fams = collections.Counter()
  for name, ns in busy.items():
    fams[family(name, names.get(name, ('', ''))[1])] += ns
  print(f'{"ms/step":>8s}  {"share":>5s}  family (pass)')
  for (fam, side), ns in fams.most_common(args.top):
    print(f'{ns / 1e6:8.2f}  {ns / total:5.1%}  {fam} ({side})')
  print()
  print(f'{"ms/step":>8s}  {"share":>5s}  {"operation":28s} {"shape":26s} from')
  for name, ns in busy.most_common(args.top):
    shape, op = names.get(name, ('', ''))
    op = op.replace('jit(train_step)/', '')
    print(f'{ns / 1e6:8.2f}  {ns / total:5.1%}  {name[:28]:28s} {shape[:26]:26s} {op[:70]}')


if __name__ == '__main__':
  main()
