"""Checkpoint saves on the training path: tljax's fit loop with synchronous and asynchronous orbax saves.

  python -m benchmarks.checkpoint [--case=23] [--examples=12800] [--every=20] [--rounds=3]

Trains one small-CNN case with tljax's own loop (fit.fit: shuffling, prefetch, metrics, a
checkpoint every `--every` steps) over generated 32x32 data, once with each kind of save,
alternating for `--rounds` rounds in one process, and prints examples/s and the seconds each
save blocks the loop. The saved checkpoint is the state at its step either way
(tests/test_checkpoints.py checks it bit for bit).
"""

import argparse
import functools
import os
import statistics
import tempfile
import time

from benchmarks import step as step_bench
from benchmarks import sweep as sweep_bench
from benchmarks import timing


def measure(case=23, examples=12800, every=20, rounds=3, log=timing.stderr):
  """{'sync': [...], 'async': [...]}: per round, ex/s and the mean blocking seconds per save."""
  from tljax.training import case as case_lib  # pylint: disable=g-import-not-at-top
  from tljax.training import compiled  # pylint: disable=g-import-not-at-top
  from tljax.data import datasets  # pylint: disable=g-import-not-at-top
  from tljax.training import fit  # pylint: disable=g-import-not-at-top
  from tljax.runtime import parallel  # pylint: disable=g-import-not-at-top
  from tljax.training import checkpoints  # pylint: disable=g-import-not-at-top
  spec = step_bench.model_specs(True, ('small_cnn',))[0]
  config = step_bench.config_for(spec)
  config.checkpoint_every_steps, config.log_every_steps = every, every
  config.progress = False
  images, labels = sweep_bench.generate('target', 'train', examples)
  arrays = datasets.Arrays(images, labels, 10, 'generated', 'train')
  c = case_lib.make_case(config, case, 10)
  mesh = parallel.Mesh.for_config(config)
  train_c = compiled.compile_steps(c.model, c.tx, c.trainable, c.state, config,
                                   eval_batch=spec['batch_size'], mesh=mesh).train
  prep = functools.partial(datasets.preprocess, image_size=32, channels=1, fit='resize')
  out = {'sync': [], 'async': []}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(rounds):
      for kind in ('sync', 'async'):
        ckpt = _Timed(checkpoints.Checkpoints(os.path.join(tmp, f'{kind}{r}'),
                                         asynchronous=kind == 'async'))
        state = compiled.new_state(c.variables, c.tx, 0, mesh)
        t0 = time.perf_counter()
        try:
          _, steps, _, _ = fit.fit(state, fit.Loop(
              train_c, arrays, config, prep=prep, epochs=1, desc=kind, metrics=_NoMetrics(),
              tags={}, mesh=mesh, ckpt=ckpt))
        finally:
          ckpt.close()  # the last save's writing counts too
        wall = time.perf_counter() - t0
        out[kind].append(dict(examples_per_s=steps * config.batch_size / wall, wall_s=wall,
                              saves=len(ckpt.blocked), save_blocked_s=statistics.mean(ckpt.blocked)))
        log(f'round {r + 1} {kind}: {out[kind][-1]["examples_per_s"]:.0f} ex/s, '
            f'{len(ckpt.blocked)} saves blocking {out[kind][-1]["save_blocked_s"] * 1e3:.0f} ms each')
  return out


class _NoMetrics:
  def write(self, **_):
    pass


class _Timed:
  """A checkpoints.Checkpoints whose saves are timed; close() waits for the last one."""

  def __init__(self, ckpt):
    self.ckpt, self.blocked, self.directory = ckpt, [], ckpt.directory

  def save(self, state, meta, keep=False):
    t = time.perf_counter()
    self.ckpt.save(state, meta, keep=keep)
    self.blocked.append(time.perf_counter() - t)

  def __getattr__(self, name):
    return getattr(self.ckpt, name)


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m benchmarks.checkpoint', description=__doc__)
  p.add_argument('--case', type=int, default=23)
  p.add_argument('--examples', type=int, default=12800)
  p.add_argument('--every', type=int, default=20, help='Steps between checkpoints.')
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args(argv)
  out = measure(args.case, args.examples, args.every, args.rounds)
  print(f'small CNN case {args.case}, batch 64, {args.examples} examples, a checkpoint every '
        f'{args.every} steps; {timing.cpu_model()["cpu"]}, {os.cpu_count()} cores')
  print(f'{"saves":<8}{"ex/s (median)":>15}{"rounds":>28}{"blocked ms/save":>17}')
  for kind, rows in out.items():
    eps = [r['examples_per_s'] for r in rows]
    print(f'{kind:<8}{statistics.median(eps):>15.0f}{", ".join(f"{v:.0f}" for v in eps):>28}'
          f'{statistics.median(r["save_blocked_s"] for r in rows) * 1e3:>17.0f}')


if __name__ == '__main__':
  main()
