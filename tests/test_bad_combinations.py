"""Combinations of config fields that used to fail inside JAX, NumPy or Python builtins: each is
now one ValueError naming the fields and what is accepted."""

import pytest

from configs import base
from tljax.config import checks
from tljax.sweep import runner
from tljax.training import case as case_lib


@pytest.mark.parametrize('prefix_cache', [True, False])
def test_a_case_that_trains_no_parameter_is_an_error(tiny_config, tmp_path, prefix_cache):
  # Was: 'min() arg is an empty sequence' (cache on), an uncaught IndexError (cache off).
  tiny_config.case_counting = 'base'
  tiny_config.cases = (1, 0)
  tiny_config.prefix_cache = prefix_cache
  with pytest.raises(ValueError, match=(
      r"config.cases=\(1, 0\) with config.case_counting='base' and config.model='small_cnn': "
      r'Case 0 trains no parameter')):
    runner.train_and_evaluate(tiny_config, str(tmp_path / 'w'))
  with pytest.raises(ValueError, match='Case 0 trains no parameter'):
    case_lib.make_case(tiny_config, 0, num_classes=5)


def test_out_of_range_case_names_its_fields(tiny_config, tmp_path):
  tiny_config.cases = (4, 24)
  with pytest.raises(ValueError, match=(r"config.cases=\(4, 24\) with config.case_counting="
                                        r"'model' and config.model='small_cnn': Case 24 is out")):
    runner.train_and_evaluate(tiny_config, str(tmp_path / 'w'))


@pytest.mark.parametrize('fields, message', [
    (dict(seeds=(-1,)), r'config.seeds=\(-1,\): must be a non-empty tuple of distinct ints in '
                        r'\[0, 4294967295\]'),  # was NumPy's error
    (dict(seeds=(2**63,)), r'config.seeds=\(9223372036854775808,\): must be'),  # was an OverflowError
    (dict(bn_momentum=1.5), r'config.bn_momentum=1.5: must be a number in \[0, 1\)'),
    (dict(num_processes=0), r'config.num_processes=0: must be an int >= 1'),
    (dict(num_processes=2, process_id=2, coordinator_address='h:1', data_parallel=True),
     r'config.process_id=2: must be an int in \[0, num_processes\) = \[0, 2\)'),
    (dict(num_processes=2, data_parallel=True),
     r"config.coordinator_address='': 'host:port' of process 0 \(needed"),
    (dict(frozen_dropout='on'), r"config.frozen_dropout='on': must be one of \('off', 'keras'\)"),
    (dict(depthwise_impl='fft'),
     r"config.depthwise_impl='fft': must be one of \('auto', 'slices', 'grouped'\)"),
])
def test_bad_fields_fail_with_a_message_naming_them(fields, message):
  config = base.get_config()
  for k, v in fields.items():
    config[k] = v
  with pytest.raises(ValueError, match=message):
    checks.validate(config)


def test_the_shipped_configs_pass_validation():
  import importlib
  for name in ('default', 'test1', 'test2', 'test3', 'test4', 'test5'):
    checks.validate(importlib.import_module(f'configs.{name}').get_config())
