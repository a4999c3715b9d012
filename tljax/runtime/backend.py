"""XLA compilation: the CPU options that make tljax's steps fast, the persistent cache, and the
memory a compiled step may use."""

import os

import jax
from jax.experimental.compilation_cache import compilation_cache
import psutil

# On XLA:CPU (jaxlib 0.10) the default YNNPACK library fusions fold whole chains of
# convolutions into one fused call that ran on one core here: a frozen small-CNN prefix took
# 72 ms of a 73 ms step. Keeping YNNPACK for reductions only (BatchNorm statistics, which the
# plain XLA emitter runs ~8x slower) doubled the frozen cases (small CNN head-only
# 890-960 -> 1870-2180 ex/s), sped up full fine-tuning 1.2x (277-288 -> 336-344 ex/s) and
# EfficientNetB0 head-only 47 -> 74-77 ex/s (2 cores; the 2026-11-25 entry of
# benchmarks/README.md). The compiled FLOP count is the same with and without
# (tests/test_backend.py).
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


def compilation_cache_dir(config):
  """Where config's compiled steps are kept between runs; None when the cache is off."""
  if not config.get('compilation_cache', False):
    return None
  d = config.get('compilation_cache_dir', '') or os.path.join(config.cache_dir, 'xla_compiled')
  return os.path.abspath(os.path.expanduser(d))


def use_compilation_cache(config):
  """Turns JAX's persistent compilation cache on at config's directory, or off.

  Every compiled step is kept whatever its compile time, so a second run of a sweep compiles
  nothing. An executable loaded from the cache has the same XLA cost and memory analyses
  (FLOPs, bytes) as a fresh compile (tests/test_backend.py). Process-wide: the last config wins.
  """
  path = compilation_cache_dir(config)
  want = (path is not None, path or '')
  have = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir or '')
  if want == have:
    return
  if path is not None:
    os.makedirs(path, exist_ok=True)
  jax.config.update('jax_enable_compilation_cache', path is not None)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  compilation_cache.reset_cache()  # JAX reads the directory once: make it read it again


def available_memory_bytes():
  """Memory the step may use: the device's free memory, or the host's available RAM on CPU."""
  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return int(psutil.virtual_memory().available)
