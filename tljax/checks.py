"""Config validation from one table of fields and accepted ranges: a bad value fails before work."""

import math
import re
import shlex
from typing import Any, Callable, NamedTuple

from tljax import data
from tljax import freezing
from tljax import models

PRETRAINED = ('source', 'imagenet', 'none')
NEW_HEAD = ('auto', 'always', 'never')
# Seeds become a 32-bit JAX key: 2**32 and above would silently repeat smaller seeds.
MAX_SEED = 2**32 - 1
# A multiply-accumulate costs picojoules; more than this is a mistyped unit (3.2 for 3.2e-12).
MAX_E_MAC_J = 1e-6
DEVICE_DTYPES = ('float32', 'float16', 'bfloat16', 'int8')
BUDGET_MEMORY = ('xla', 'device')
LAUNCHERS = ('inline', 'local', 'slurm')


def _slurm_extra(v, c):
  """sbatch options as on its command line: each word '--name=value' or '--name'."""
  try:
    words = shlex.split(v)
  except ValueError:
    return False
  return all(re.fullmatch(r'--[A-Za-z][A-Za-z0-9_-]*(=.*)?', w, re.S) for w in words)


class Field(NamedTuple):
  """One config field: its type, its accepted values and the words that say which."""
  kind: Any  # a type or tuple of types; bool is never accepted as an int or a float
  ok: Callable[[Any, Any], bool] | None  # ok(value, config); None = free-form (type only)
  accepted: str | Callable[[Any], str]  # completes 'config.FIELD=VALUE: ...'; or f(config)


def _is(kind, v):
  if isinstance(v, bool) and kind is not bool and bool not in (
      kind if isinstance(kind, tuple) else (kind,)):
    return False
  return isinstance(v, kind)


def _int_at_least(lo, what=''):
  return Field(int, lambda v, c: v >= lo, f'must be an int >= {lo}{what}')


def _number_in(lo, hi, *, lo_open, hi_open, what=''):
  def ok(v, c):
    return (math.isfinite(v) and (lo < v if lo_open else lo <= v)
            and (v < hi if hi_open else v <= hi))
  brackets = ('(' if lo_open else '[') + f'{lo:g}, {hi:g}' + (')' if hi_open else ']')
  return Field((int, float), ok, f'must be a number in {brackets}{what}')


def _one_of(choices, what=''):
  return Field(str, lambda v, c: v in choices, f'must be one of {tuple(choices)}{what}')


def _class_list(v, c):
  return all(_is(int, x) and x >= 0 for x in v) and len(set(v)) == len(v)


def _cases(v, c):
  """Non-empty, distinct entries, each an int, a case string or a non-empty tuple of
  (regex, label) string pairs (hashable: cases key records; validate_cases checks the rest)."""
  def one(x):
    if isinstance(x, tuple):
      return len(x) > 0 and all(isinstance(r, tuple) and len(r) == 2
                                and all(isinstance(s, str) for s in r) for r in x)
    return _is(int, x) or isinstance(x, str)
  return len(v) > 0 and all(one(x) for x in v) and len(set(v)) == len(v)


def _image_size(v, c):
  fixed = models.fixed_image_size(c.model)
  ok = v == fixed if fixed else v >= models.min_image_size(c.model)
  return ok and _imagenet_size_ok(v, c)


def _image_size_accepted(c):
  fixed = models.fixed_image_size(c.model)
  if not _imagenet_size_ok(c.image_size, c):
    return (f"model {c.model!r} with pretrained='imagenet' takes "
            f'{models.or_words(models.MOBILENET_V2_IMAGENET_SIZES)} (the sizes Keras has ImageNet '
            'weights for)')
  if fixed:
    return (f'model {c.model!r} takes exactly {fixed}x{fixed} images (its dense layer is sized '
            'for that)')
  m = models.min_image_size(c.model)
  return f'model {c.model!r} needs images of at least {m}x{m} (an int >= {m})'


def _imagenet_size_ok(v, c):
  """MobileNetV2's ImageNet weights exist per input size."""
  return not (c.get('pretrained') == 'imagenet' and c.model == 'mobilenet_v2'
              and v not in models.MOBILENET_V2_IMAGENET_SIZES)


def _channels_accepted(c):
  return (f"model {c.model!r} takes {models.default_input_shape(c.model)[-1]}-channel images "
          '(1 = grayscale, 3 = RGB)')


def _takes(c, field):
  return field in models.MODEL_FIELDS.get(c.model, ())


def _alpha(v, c):
  """A MobileNet's width multiplier: > 0, one Keras has weights for with 'imagenet'; 1.0 for
  the models without one."""
  if not _takes(c, 'alpha'):
    return v == models.FIELD_DEFAULTS['alpha']
  if not (math.isfinite(v) and v > 0):
    return False
  return c.get('pretrained') != 'imagenet' or not models.imagenet_problem(
      c.model, v, c.get('minimalistic', False))


def _alpha_accepted(c):
  if not _takes(c, 'alpha'):
    return f'{models.field_users("alpha")}; model {c.model!r} takes none: leave it at 1.0'
  problem = c.get('pretrained') == 'imagenet' and models.imagenet_problem(
      c.model, c.alpha, c.get('minimalistic', False))
  if problem and isinstance(c.alpha, (int, float)) and c.alpha > 0:
    return f"with pretrained='imagenet': {problem}"
  return 'must be a number > 0 (the width multiplier: 1.0 = the paper\'s widths)'


def _dataset(role):
  def ok(v, c):
    return (role == 'source' and c.pretrained != 'source') or v in data.names()
  return Field(str, ok, lambda c: f'unknown dataset; known datasets: {", ".join(data.names())}')


# Every field of configs/base.py, in checking order (`model` first: other ranges depend on it).
# A new field must be added here (tests/test_checks.py fails otherwise); free-form fields have
# ok=None. A check that needs the data loaded (e.g. batch_size against the dataset) is in
# check_data below.
FIELDS = {
    'model': Field(str, lambda v, c: v in models.names(),
                   lambda c: f'unknown model; known models: {", ".join(models.names())}'),
    'name': Field(str, None, 'any string (the default workdir is artifacts/<name>)'),
    'image_size': Field(int, _image_size, _image_size_accepted),
    'channels': Field(int, lambda v, c: v == models.default_input_shape(c.model)[-1],
                      _channels_accepted),
    'pretrained': Field(str, lambda v, c: v in PRETRAINED and (
        v != 'imagenet' or c.model in models.IMAGENET_MODELS),
                        f"must be one of {PRETRAINED} ('imagenet' needs a model with Keras "
                        f"ImageNet weights: {', '.join(models.IMAGENET_MODELS)})"),
    'alpha': Field((int, float), _alpha, _alpha_accepted),
    'minimalistic': Field(bool, lambda v, c: (
        not v or 'minimalistic' in models.MODEL_FIELDS.get(c.model, ())),
                          lambda c: f"must be True or False; {models.field_users('minimalistic')}"
                          f'; model {c.model!r} takes none: leave it False'),
    'source_dataset': _dataset('source'),
    'source_classes': Field((tuple, list), _class_list,
                            'must be a tuple of distinct labels >= 0 (() = all)'),
    'target_dataset': _dataset('target'),
    'target_classes': Field((tuple, list), _class_list,
                            'must be a tuple of distinct labels >= 0 (() = all)'),
    'source_data_dir': Field(str, None, "the source image folder's root ('' for TFDS/digits)"),
    'target_data_dir': Field(str, None, "the target image folder's root ('' for TFDS/digits)"),
    'data_dir': Field(str, None, "TFDS's data directory ('' = ~/tensorflow_datasets)"),
    'data_memory_mb': _number_in(0, math.inf, lo_open=False, hi_open=True,
                                 what=' (MiB; 0 = half the available RAM)'),
    'cache_dir': Field(str, None, 'a directory for pretrained models and weights'),
    'pretrain_epochs': Field(int, lambda v, c: v >= 1 or (v >= 0 and c.pretrained != 'source'),
                             "must be an int >= 1 (>= 0 when pretrained is not 'source')"),
    'pretrain_learning_rate': _number_in(0, 10, lo_open=True, hi_open=True),
    'bn_momentum': _number_in(0, 1, lo_open=False, hi_open=True,
                              what=' (BatchNorm moving-average momentum; Keras: 0.99)'),
    'new_head': _one_of(NEW_HEAD),
    'frozen_dropout': _one_of(models.FROZEN_DROPOUT),
    'depthwise_impl': _one_of(models.DEPTHWISE_IMPLS),
    'cases': Field((tuple, list), _cases, 'must be a non-empty tuple of distinct cases, each an '
                   "int N, a string 'last:N', 'bias:N', 'norm:N', 'block:NAME', 'layers:A..B', "
                   "or a tuple of (regex, label) rules"),
    'case_counting': _one_of(freezing.COUNTINGS),
    'epochs': _int_at_least(1),
    'steps_per_epoch': _int_at_least(0, ' (0 = whole epochs)'),
    'batch_size': _int_at_least(1),
    'eval_batch_size': _int_at_least(1),
    'learning_rate': _number_in(0, 10, lo_open=True, hi_open=True),
    'seeds': Field((tuple, list), lambda v, c: len(v) > 0 and len(set(v)) == len(v) and all(
        _is(int, s) and 0 <= s <= MAX_SEED for s in v),
                   f'must be a non-empty tuple of distinct ints in [0, {MAX_SEED}]'),
    'prefix_cache': Field(bool, lambda v, c: True, 'must be True or False'),
    'e_mac_j': _number_in(0, MAX_E_MAC_J, lo_open=True, hi_open=False,
                          what=' (J per multiply-accumulate; 3.2 pJ = 3.2e-12)'),
    'device_batch_size': _int_at_least(1, ' (examples per step on the edge device)'),
    'device_frozen_dtype': _one_of(DEVICE_DTYPES),
    'device_xla_check': Field(bool, lambda v, c: True, 'must be True or False'),
    'max_energy_per_example_j': _number_in(0, math.inf, lo_open=False, hi_open=True,
                                           what=' (J per training example; 0 = no limit)'),
    'max_train_memory_mb': _number_in(0, math.inf, lo_open=False, hi_open=True,
                                      what=' (MiB; 0 = no limit)'),
    'min_accuracy': _number_in(0, 1, lo_open=False, hi_open=False,
                               what=' (a fraction: 0.9 = 90 %; 0 = no limit)'),
    'budget_memory': _one_of(BUDGET_MEMORY),
    'log_every_steps': _int_at_least(1),
    'progress': Field(bool, lambda v, c: True, 'must be True or False'),
    'checkpoint_every_steps': _int_at_least(0, ' (0 = no periodic checkpoints)'),
    'restart': Field(bool, lambda v, c: True, 'must be True or False'),
    'data_parallel': Field(bool, lambda v, c: True, 'must be True or False'),
    'num_processes': Field(int, lambda v, c: v == 1 or (v > 1 and c.data_parallel),
                           'must be an int >= 1, and 1 unless data_parallel=True (the processes '
                           'of a run share each batch)'),
    'process_id': Field(int, lambda v, c: 0 <= v < c.num_processes,
                        lambda c: f'must be an int in [0, num_processes) = [0, {c.num_processes})'),
    'coordinator_address': Field(str, lambda v, c: c.num_processes <= 1 or bool(v),
                                 "'host:port' of process 0 (needed when num_processes > 1)"),
    'xla_cpu_tuning': Field(bool, lambda v, c: True, 'must be True or False'),
    'compilation_cache': Field(bool, lambda v, c: True, 'must be True or False'),
    'compilation_cache_dir': Field(str, None, "a directory ('' = <cache_dir>/xla_compiled)"),
    'dry_run': Field(bool, lambda v, c: True, 'must be True or False'),
    'launcher': Field(str, lambda v, c: v in LAUNCHERS and (v == 'inline' or c.num_processes == 1),
                      f'must be one of {LAUNCHERS} (jobs run one process each: '
                      "'local' and 'slurm' need num_processes=1)"),
    'max_parallel_jobs': _int_at_least(1, " (jobs running at once with launcher='local')"),
    'slurm_partition': Field(str, None, "a SLURM partition ('' = the cluster's default)"),
    'slurm_gpus_per_job': _int_at_least(0),
    'slurm_time_minutes': _int_at_least(1, ' (the time limit of each job)'),
    'slurm_extra': Field(str, _slurm_extra, "must be sbatch options as on its command line, "
                         "each '--name=value' or '--name', e.g. '--account=abc --qos=high'"),
    'launcher_wait': Field(bool, lambda v, c: v or c.launcher == 'slurm',
                           "must be True or False; False needs launcher='slurm' (local jobs are "
                           'started by the waiting launcher)'),
    'job_retries': _int_at_least(0),
}


def check_field(config, field):
  """Raises ValueError 'config.FIELD=VALUE: accepted' when `field` is outside its range."""
  spec = FIELDS[field]
  v = config[field]
  if _is(spec.kind, v) and (spec.ok is None or spec.ok(v, config)):
    return
  accepted = spec.accepted(config) if callable(spec.accepted) else spec.accepted
  shown = tuple(v) if isinstance(v, list) else v
  raise ValueError(f'config.{field}={shown!r}: {accepted}.')


def validate(config):
  """Raises ValueError naming the first field of `config` outside its range in FIELDS."""
  for field in FIELDS:
    if field in config:
      check_field(config, field)


def check_data(config, train_arrays):
  """The ranges that need the data: the train batch against the training examples."""
  if config.batch_size > len(train_arrays):
    raise ValueError(f'config.batch_size={config.batch_size}: must be at most the '
                     f'{len(train_arrays)} training examples of {train_arrays.name!r}.')


def validate_cases(config, layers):
  """Every case of `config.cases` against the model's Keras `layers` (freezing.case_spec): a
  known form, in range, training at least one parameter, and no two with the same canonical
  name (9 and 'last:9'). The error names the fields that chose the case."""
  seen = {}
  for n in config.cases:
    try:
      name = freezing.case_spec(n, layers, config.case_counting).name
      if name in seen:
        raise ValueError(f'cases {seen[name]!r} and {n!r} are the same case {name!r}; list '
                         'each case once.')
      seen[name] = n
    except ValueError as e:
      raise ValueError(f'config.cases={tuple(config.cases)!r} with config.case_counting='
                       f'{config.case_counting!r} and config.model={config.model!r}: {e}') from None
