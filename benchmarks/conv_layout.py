"""Convolution layouts on XLA:CPU: the small CNN's conv stack with NHWC against NCHW dimension numbers.

  python -m benchmarks.conv_layout [--rounds=3] [--steps=20]

Forward and weight gradients of the six 3x3 convolutions (with ReLU and the max pools) at batch
64, 32x32x1, jitted once per layout with XLA's default options; prints the largest gradient
difference between the two and examples/s per round, alternating.
"""

import argparse
import statistics
import time

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

CHANNELS = ((1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128))
DIMS = {'NHWC': (('NHWC', 'HWIO', 'NHWC'), (1, 2, 2, 1)),
        'NCHW': (('NCHW', 'HWIO', 'NCHW'), (1, 1, 2, 2))}


def conv_stack(x, kernels, layout):
  dn, pool = DIMS[layout]
  for i, w in enumerate(kernels):
    x = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn))
    if i % 2:
      x = lax.reduce_window(x, -jnp.inf, lax.max, pool, pool, 'VALID')
  return jnp.sum(x * x)


def measure(rounds=3, steps=20, batch=64):
  rng = np.random.default_rng(0)
  kernels = [jnp.asarray(rng.normal(size=(3, 3, a, b)).astype(np.float32) * 0.1)
             for a, b in CHANNELS]
  nhwc = jnp.asarray(rng.uniform(size=(batch, 32, 32, 1)).astype(np.float32))
  inputs = {'NHWC': nhwc, 'NCHW': jnp.transpose(nhwc, (0, 3, 1, 2))}
  grads = {l: jax.jit(jax.grad(lambda k, x, l=l: conv_stack(x, k, l))) for l in DIMS}
  a, b = (grads[l](kernels, inputs[l]) for l in DIMS)
  diff = max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u))) for u, v in zip(a, b))
  out = {l: [] for l in DIMS}
  for _ in range(rounds):
    for l in DIMS:
      jax.block_until_ready(grads[l](kernels, inputs[l]))
      t = time.perf_counter()
      for _ in range(steps):
        g = grads[l](kernels, inputs[l])
      jax.block_until_ready(g)
      out[l].append(steps * batch / (time.perf_counter() - t))
  return diff, out


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m benchmarks.conv_layout', description=__doc__)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=20)
  args = p.parse_args(argv)
  diff, out = measure(args.rounds, args.steps)
  print(f'largest relative gradient difference NCHW vs NHWC: {diff:.2e}')
  print(f'{"layout":<8}{"ex/s (median)":>15}{"rounds":>24}')
  for layout, v in out.items():
    print(f'{layout:<8}{statistics.median(v):>15.0f}{", ".join(f"{x:.0f}" for x in v):>24}')


if __name__ == '__main__':
  main()
