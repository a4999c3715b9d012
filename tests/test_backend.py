"""Per-backend compiler options: applied on CPU, recorded, overridable, FLOP count unchanged."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tljax.accounting import costs
from tljax.runtime import backend
from tljax.training import case as case_lib
from tljax.training.steps import train_step
from configs import base


def _ynn_fusion_ops(hlo_text):
  """Opcode counts inside the computations that YNNPACK custom fusions call."""
  called = set()
  for line in hlo_text.splitlines():
    if 'kind=kCustom' in line and '__ynn_fusion' in line:
      called.update(re.findall(r'calls=(%[\w.\-]+)', line))
  ops, current = collections.Counter(), None
  for line in hlo_text.splitlines():
    header = re.match(r'\s*(%[\w.\-]+) .*\{\s*$', line)
    if header:
      current = header.group(1)
    elif current in called:
      op = re.search(r'= \S+ (\w[\w-]*)\(', line)
      if op:
        ops[op.group(1)] += 1
  return ops


def test_cpu_options_and_how_to_turn_them_off(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert backend.compiler_options() == backend.CPU_OPTIONS
  # Other backends get no CPU options (the branch a CPU-only machine never takes by itself).
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert backend.compiler_options() == {}
  monkeypatch.undo()
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  off = ml_collections.ConfigDict({'xla_cpu_tuning': False})
  assert backend.compiler_options(off) == {}
  # An option the user set in XLA_FLAGS is theirs: tljax does not pass its own.
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert backend.compiler_options() == {}


def test_tuned_and_default_compiles_count_the_same_flops_and_agree():
  config = base.get_config()
  config.batch_size = 8
  case = case_lib.make_case(config, 23, 10)
  step = jax.jit(functools.partial(train_step, model=case.model, tx=case.tx,
                                   trainable=case.trainable))
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 1))
  y = jnp.arange(8) % 10
  lowered = step.lower(case.state, x, y)
  tuned, default = backend.compile(lowered), lowered.compile()
  assert costs.xla_costs(tuned)['flops'] == costs.xla_costs(default)['flops']
  assert tuned.as_text() != default.as_text()  # the options did change the program
  # ...as intended: YNNPACK library fusions keep the reductions (BatchNorm statistics) and no
  # convolution or matmul, which XLA's own emitters then run on every core.
  ops = _ynn_fusion_ops(tuned.as_text())
  assert ops['reduce'] > 0
  assert ops['convolution'] == ops['dot'] == 0, ops

  # Same loss and gradients up to float rounding (Adam's first step would amplify
  # sign flips of near-zero gradients, so the gradients are compared, not the update).
  def loss(params):
    logits = case.model.apply({'params': params, 'batch_stats': case.state.batch_stats}, x,
                              train=False)
    return jnp.mean((logits - jax.nn.one_hot(y, 10)) ** 2)
  grad = jax.jit(jax.value_and_grad(loss)).lower(case.state.params)
  (l1, g1), (l2, g2) = backend.compile(grad)(case.state.params), grad.compile()(case.state.params)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-5 * np.abs(b).max()), g1, g2)
