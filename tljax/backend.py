"""XLA compiler options per backend: the CPU settings that make tljax's steps fast."""

import os

import jax

# On XLA:CPU (jaxlib 0.10) the default YNNPACK library fusions fold whole chains of
# convolutions into one fused call that ran on one core here: a frozen small-CNN prefix took
# 72 ms of a 73 ms step. Keeping YNNPACK for reductions only (BatchNorm statistics, which the
# plain XLA emitter runs ~8x slower) doubled the frozen cases (head only 890 -> 1950 ex/s)
# and sped up full fine-tuning by 1.3x; EfficientNetB0 head-only went from 47 to 74 ex/s.
# Measured with `python -m tljax.bench`; see README "Speed". The compiled FLOP count is
# the same with and without (it counts HLO operations, not library calls).
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
