"""The reported FLOPs are XLA:CPU's count of the same steps on every backend.

docs/accounting.md "FLOPs per backend" says why.

XLA:GPU leaves cuDNN convolutions out of its cost analysis (0.92 against 69.6 MFLOP per example
for the small CNN's head-only step on an H100), so off the CPU the steps are compiled a second
time for the host CPU. This machine has no GPU: the test makes the backend look like one and
checks that the twin is compiled and counted, the prefix cache's steps included.
"""

import jax
import pytest

from tljax.accounting import costs
from tljax.training import case as case_lib


@pytest.fixture(scope='module')
def plans(tmp_path_factory):
  from conftest import shrunk_default  # pylint: disable=g-import-not-at-top
  config = shrunk_default(tmp_path_factory.mktemp('cache'))
  as_cpu = case_lib.plan_case(config, 'last:9', 5, 64)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(costs.jax, 'default_backend', lambda: 'gpu')
    assert costs.counting_model(as_cpu.case.model) is as_cpu.case.model
    as_gpu = case_lib.plan_case(config, 'last:9', 5, 64)
  return as_cpu, as_gpu


def test_off_the_cpu_the_counted_flops_are_the_cpu_twins(plans):
  as_cpu, as_gpu = plans
  assert costs.counting_device().platform == 'cpu'
  assert 'flops_as_compiled' not in as_cpu.train_cost  # counted as compiled
  # The twin's count is the CPU compile's: here both are, so all three agree exactly.
  assert as_gpu.train_cost['flops'] == as_gpu.train_cost['flops_as_compiled'] == (
      as_cpu.train_cost['flops'])
  assert as_gpu.eval_cost['flops'] == as_cpu.eval_cost['flops']
  # Bytes accessed and transcendentals come from the same twin (docs/accounting.md "Memory
  # traffic"): the running program's own are kept apart.
  for k in ('bytes_accessed', 'transcendentals'):
    assert as_gpu.train_cost[k] == as_gpu.train_cost[f'{k}_as_compiled'] == as_cpu.train_cost[k]
    assert f'{k}_as_compiled' not in as_cpu.train_cost
  assert as_gpu.train_cost['bytes_accessed'] > 0
  for name in ('prefix_cost', 'train_cost', 'eval_cost'):  # the cached suffix's steps too
    got, want = getattr(as_gpu.cached, name), getattr(as_cpu.cached, name)
    assert got['flops'] == got['flops_as_compiled'] == want['flops'] > 0, name
  assert jax.default_backend() == 'cpu'  # the patch is gone
