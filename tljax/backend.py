"""XLA compiler options per backend: the CPU settings that make tljax's steps fast."""

import os

import jax

# On XLA:CPU (jaxlib 0.10) the default YNNPACK library fusions fold whole chains of
# convolutions into one fused call that ran on one core here: a frozen small-CNN prefix took
# 72 ms of a 73 ms step. Keeping YNNPACK for reductions only (BatchNorm statistics, which the
# plain XLA emitter runs ~8x slower) doubled the frozen cases (small CNN head-only
# 890-960 -> 1870-2180 ex/s), sped up full fine-tuning 1.2x (277-288 -> 336-344 ex/s) and
# EfficientNetB0 head-only 47 -> 74-77 ex/s (2 cores; `benchmarks/step.py`, README "Speed"). The
# compiled FLOP count is the same with and without (tests/test_backend.py).
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}


def compiler_options(config=None) -> dict:
  """Options for `Lowered.compile(compiler_options=...)` on the current default backend.

  Empty on GPU/TPU, when `config.xla_cpu_tuning` is False, and for any option the user set
  in XLA_FLAGS themselves (their choice wins).
  """
  if jax.default_backend() != 'cpu':
    return {}
  if config is not None and not config.get('xla_cpu_tuning', True):
    return {}
  flags = os.environ.get('XLA_FLAGS', '')
  return {k: v for k, v in CPU_OPTIONS.items() if f'--{k}' not in flags}


def compile(lowered, config=None):  # pylint: disable=redefined-builtin
  """`lowered.compile()` with this backend's options."""
  return lowered.compile(compiler_options=compiler_options(config) or None)
