"""Config validation from one table of fields and accepted ranges: a bad value fails before work."""

import math
import re
import shlex
from typing import Any, Callable, NamedTuple

from tljax.accounting import device_memory
from tljax.data import datasets
from tljax.decision import pareto
from tljax import models
from tljax.training import freezing

PRETRAINED = ('source', 'imagenet', 'none')
NEW_HEAD = ('auto', 'always', 'never')
# Seeds become a 32-bit JAX key: 2**32 and above would silently repeat smaller seeds.
MAX_SEED = 2**32 - 1
# A multiply-accumulate costs picojoules; more than this is a mistyped unit (3.2 for 3.2e-12).
MAX_E_MAC_J = 1e-6
# Owned by the device memory model (bytes per dtype) and the Pareto front (memory fields).
DEVICE_DTYPES = tuple(device_memory.DTYPE_BYTES)
BUDGET_MEMORY = tuple(pareto.MEMORY_FIELDS)
LAUNCHERS = ('inline', 'local', 'slurm')


def _slurm_extra(v, c):
  """sbatch options as on its command line: each word '--name=value' or '--name'."""
  try:
    words = shlex.split(v)
  except ValueError:
    return False
  return all(re.fullmatch(r'--[A-Za-z][A-Za-z0-9_-]*(=.*)?', w, re.S) for w in words)


class Field(NamedTuple):
  """One config field: its type, its accepted values and the words that say which; whether it
  changes a run's numbers (then it is in every run's fingerprint and a workdir refuses a change
  of it), whether it changes the source pretraining (then it is in its cache key), and what it
  does in one line (docs/configuration.md and `python launch.py --help` print it)."""
  kind: Any  # a type or tuple of types; bool is never accepted as an int or a float
  ok: Callable[[Any, Any], bool] | None  # ok(value, config); None = free-form (type only)
  accepted: str | Callable[[Any], str]  # completes 'config.FIELD=VALUE: ...'; or f(config)
  numbers: bool = True
  pretraining: bool = False
  doc: str = ''


def _safe(field):
  """`field` changes no number: a workdir may be resumed or grown with it changed."""
  return field._replace(numbers=False)


def _pre(field):
  """`field` changes the source pretraining too."""
  return field._replace(pretraining=True)


def _doc(doc, field):
  """`field` with its one-line description."""
  return field._replace(doc=doc)


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
    return (role == 'source' and c.pretrained != 'source') or v in datasets.names()
  return Field(str, ok, lambda c: f'unknown dataset; known datasets: {", ".join(datasets.names())}')


# Every field of configs/base.py, in checking order (`model` first: other ranges depend on it).
# A new field must be added here with its one-line description (tests/test_checks.py and
# tests/test_docs.py fail otherwise; then regenerate docs/configuration.md, docs/development.md
# says how); free-form fields have ok=None. A check that needs the data loaded (e.g. batch_size
# against the dataset) is in check_data below.
FIELDS = {
    'model': _doc("the network: small_cnn (the thesis's CNN) or a Keras application "
                  '(efficientnet_b0/b2, mobilenet_v2/v3_small/v3_large, resnet50)',
                  _pre(Field(
                      str, lambda v, c: v in models.names(),
                      lambda c: f'unknown model; known models: {", ".join(models.names())}'))),
    'name': _doc('the experiment\'s name; the default workdir is artifacts/<name>', _safe(Field(
        str, None, 'any string (the default workdir is artifacts/<name>)'))),
    'image_size': _doc('input side in pixels', _pre(Field(int, _image_size, _image_size_accepted))),
    'channels': _doc('input channels: 1 (grayscale) or 3 (RGB), as the model takes', _pre(Field(
        int, lambda v, c: v == models.default_input_shape(c.model)[-1], _channels_accepted))),
    'pretrained': _doc("starting weights: 'source' (trained on source_dataset, cached per seed), "
                       "'imagenet' (Keras's weights) or 'none' (random)", Field(
                           str, lambda v, c: v in PRETRAINED and (
                               v != 'imagenet' or c.model in models.IMAGENET_MODELS),
                           f"must be one of {PRETRAINED} ('imagenet' needs a model with Keras "
                           f"ImageNet weights: {', '.join(models.IMAGENET_MODELS)})")),
    'alpha': _doc("the MobileNets' width multiplier (Keras's alpha; 1.0 = the paper's widths); "
                  'the other models take none and keep 1.0', _pre(Field(
                      (int, float), _alpha, _alpha_accepted))),
    'minimalistic': _doc('MobileNetV3 without squeeze-excite and hard-swish, 3x3 kernels '
                         "(Keras's minimalistic); the other models keep False", _pre(Field(
                             bool, lambda v, c: (
                                 not v or 'minimalistic' in models.MODEL_FIELDS.get(c.model, ())),
                             lambda c: 'must be True or False; '
                             f"{models.field_users('minimalistic')}; model {c.model!r} takes "
                             'none: leave it False'))),
    'source_dataset': _doc("the dataset pretrained on when pretrained='source'",
                           _pre(_dataset('source'))),
    'source_classes': _doc('labels of the source dataset kept, remapped to 0..k-1 in this order',
                           _pre(Field((tuple, list), _class_list,
                                      'must be a tuple of distinct labels >= 0 (() = all)'))),
    'target_dataset': _doc('the dataset every case is fine-tuned and tested on',
                           _dataset('target')),
    'target_classes': _doc('labels of the target dataset kept, remapped to 0..k-1 in this order',
                           Field((tuple, list), _class_list,
                                 'must be a tuple of distinct labels >= 0 (() = all)')),
    # The folders' paths change no number: their contents are fingerprinted (the data identity).
    'source_data_dir': _doc("the source image folder's root (image_folder, intel_scenes)",
                            _safe(Field(str, None,
                                        "the source image folder's root ('' for TFDS/digits)"))),
    'target_data_dir': _doc("the target image folder's root (image_folder, intel_scenes)",
                            _safe(Field(str, None,
                                        "the target image folder's root ('' for TFDS/digits)"))),
    'data_dir': _doc("TFDS's data directory", _safe(Field(
        str, None, "TFDS's data directory ('' = ~/tensorflow_datasets)"))),
    'data_memory_mb': _doc('a prepared image-folder split larger than this is read from a memory '
                           'map of its cache file instead of RAM', _safe(_number_in(
                               0, math.inf, lo_open=False, hi_open=True,
                               what=' (MiB; 0 = half the available RAM)'))),
    'cache_dir': _doc('pretrained models, ImageNet weights, prepared image folders and compiled '
                      'steps, reused across workdirs', _safe(Field(
                          str, None, 'a directory for pretrained models and weights'))),
    'pretrain_epochs': _doc('epochs of source pretraining (every layer trains)', _pre(Field(
        int, lambda v, c: v >= 1 or (v >= 0 and c.pretrained != 'source'),
        "must be an int >= 1 (>= 0 when pretrained is not 'source')"))),
    'pretrain_learning_rate': _doc("Adam's learning rate in source pretraining",
                                   _pre(_number_in(0, 10, lo_open=True, hi_open=True))),
    'bn_momentum': _doc('BatchNorm moving-average momentum; use 0.9 when a run has only a few '
                        'hundred steps', _pre(_number_in(
                            0, 1, lo_open=False, hi_open=True,
                            what=' (BatchNorm moving-average momentum; Keras: 0.99)'))),
    'new_head': _doc("re-initialise the classifier (the last Dense): 'auto' keeps the source's "
                     'only for the same dataset and classes', _one_of(NEW_HEAD)),
    'frozen_dropout': _doc("frozen Dropout layers in training: 'keras' drop units (the thesis's "
                           "runs), 'off' inference mode", _one_of(models.FROZEN_DROPOUT)),
    'depthwise_impl': _doc("EfficientNet's depthwise convolutions: 'auto' (slices on CPU, grouped "
                           'on GPU/TPU); the FLOPs reported do not depend on it',
                           _one_of(models.DEPTHWISE_IMPLS)),
    # The sweep's lists: each run's own case (its rules) and seed are in its fingerprint, so
    # cases and seeds may be added to a finished workdir (only the new runs train).
    'cases': _doc('the freeze cases, each trained once per seed (docs/cases.md)', _safe(Field(
        (tuple, list), _cases, 'must be a non-empty tuple of distinct cases, each an '
        "int N, a string 'last:N', 'bias:N', 'bias_batchstats:N', 'norm:N', 'block:NAME', "
        "'layers:A..B', or a tuple of (regex, label) rules"))),
    'case_counting': _doc("what N counts: 'model' the last N layers of the model, 'base' the "
                          'head plus the last N layers of the base', _one_of(freezing.COUNTINGS)),
    'epochs': _doc('fine-tuning epochs of each run', _int_at_least(1)),
    'steps_per_epoch': _doc('at most this many steps per epoch', _pre(_int_at_least(
        0, ' (0 = whole epochs)'))),
    'batch_size': _doc('train batch (the last partial batch is dropped)', _pre(_int_at_least(1))),
    'eval_batch_size': _doc('evaluation batch (the last one is padded and masked)',
                            _int_at_least(1)),
    'learning_rate': _doc("Adam's learning rate in fine-tuning",
                          _number_in(0, 10, lo_open=True, hi_open=True)),
    'seeds': _doc('every case trains once per seed; the summary gives means and 95 % intervals '
                  'over them', _safe(Field(
                      (tuple, list), lambda v, c: len(v) > 0 and len(set(v)) == len(v) and all(
                          _is(int, s) and 0 <= s <= MAX_SEED for s in v),
                      f'must be a non-empty tuple of distinct ints in [0, {MAX_SEED}]'))),
    'prefix_cache': _doc('run the frozen layers below a case once and train on their cached '
                         'output (same numbers, faster)', Field(bool, lambda v, c: True,
                                                                'must be True or False')),
    'e_mac_j': _doc('energy of one multiply-accumulate in J (45 nm: 3.2 pJ)', _number_in(
        0, MAX_E_MAC_J, lo_open=True, hi_open=False,
        what=' (J per multiply-accumulate; 3.2 pJ = 3.2e-12)')),
    'device_batch_size': _doc("the edge device's batch in the device memory model",
                              _int_at_least(1, ' (examples per step on the edge device)')),
    'device_frozen_dtype': _doc('how the device memory model stores frozen weights (TinyTL: int8)',
                                _one_of(DEVICE_DTYPES)),
    'device_xla_check': _doc("cross-check the device memory model with XLA's at "
                             'device_batch_size (one more compile per case)', _safe(Field(
                                 bool, lambda v, c: True, 'must be True or False'))),
    'max_energy_per_example_j': _doc('budget: training energy per example (J)', _safe(_number_in(
        0, math.inf, lo_open=False, hi_open=True, what=' (J per training example; 0 = no limit)'))),
    'max_train_memory_mb': _doc('budget: train memory (MiB), as budget_memory says', _safe(
        _number_in(0, math.inf, lo_open=False, hi_open=True, what=' (MiB; 0 = no limit)'))),
    'min_accuracy': _doc('budget: least mean test accuracy', _safe(_number_in(
        0, 1, lo_open=False, hi_open=False, what=' (a fraction: 0.9 = 90 %; 0 = no limit)'))),
    'budget_memory': _doc("the memory the front and the budget read: 'xla' (the compiled step's) "
                          "or 'device' (the device model's)", _safe(_one_of(BUDGET_MEMORY))),
    'include_incomplete': _doc('count cases with runs missing or failed on the front and in the '
                               'recommendation', _safe(Field(bool, lambda v, c: True,
                                                             'must be True or False'))),
    'log_every_steps': _doc('a metrics.jsonl line and a progress update every this many steps',
                            _safe(_int_at_least(1))),
    'progress': _doc('a progress bar per run', _safe(Field(bool, lambda v, c: True,
                                                          'must be True or False'))),
    'checkpoint_every_steps': _doc('checkpoint the train state every this many steps', _safe(
        _int_at_least(0, ' (0 = no periodic checkpoints)'))),
    'restart': _doc("delete this workdir's earlier results and start over", _safe(Field(
        bool, lambda v, c: True, 'must be True or False'))),
    'data_parallel': _doc('shard each batch over every device of every process', _pre(Field(
        bool, lambda v, c: True, 'must be True or False'))),
    'num_processes': _doc('processes of a multi-host run', Field(
        int, lambda v, c: v == 1 or (v > 1 and c.data_parallel),
        'must be an int >= 1, and 1 unless data_parallel=True (the processes of a run share '
        'each batch)')),
    'process_id': _doc("this process's index in a multi-host run", Field(
        int, lambda v, c: 0 <= v < c.num_processes,
        lambda c: f'must be an int in [0, num_processes) = [0, {c.num_processes})')),
    'coordinator_address': _doc("process 0's 'host:port' in a multi-host run", Field(
        str, lambda v, c: c.num_processes <= 1 or bool(v),
        "'host:port' of process 0 (needed when num_processes > 1)")),
    'xla_cpu_tuning': _doc("on XLA:CPU, compile with tljax's measured options "
                           "(tljax/runtime/backend.py); False: XLA's defaults", _pre(Field(
                               bool, lambda v, c: True, 'must be True or False'))),
    'compilation_cache': _doc("keep compiled steps in JAX's persistent cache: a second run "
                              'loads them', _safe(Field(bool, lambda v, c: True,
                                                       'must be True or False'))),
    'compilation_cache_dir': _doc('where compiled steps are kept; trust it as you trust code',
                                  _safe(Field(str, None,
                                              "a directory ('' = <cache_dir>/xla_compiled)"))),
    'dry_run': _doc('one step per case on mock data with random weights: the costs without the '
                    'training', Field(bool, lambda v, c: True, 'must be True or False')),
    'launcher': _doc("where runs go: this process, or a submitit job per run (docs/clusters.md)",
                     _safe(Field(str, lambda v, c: v in LAUNCHERS and (
                         v == 'inline' or c.num_processes == 1),
                                 f'must be one of {LAUNCHERS} (jobs run one process each: '
                                 "'local' and 'slurm' need num_processes=1)"))),
    'max_parallel_jobs': _doc("jobs running at once with launcher='local'", _safe(_int_at_least(
        1, " (jobs running at once with launcher='local')"))),
    'slurm_partition': _doc("each SLURM job's partition", _safe(Field(
        str, None, "a SLURM partition ('' = the cluster's default)"))),
    'slurm_gpus_per_job': _doc('GPUs per SLURM job', _safe(_int_at_least(0))),
    'slurm_time_minutes': _doc("each SLURM job's time limit; a job reaching it is requeued from "
                               'its checkpoint', _safe(_int_at_least(
                                   1, ' (the time limit of each job)'))),
    'slurm_extra': _doc('other sbatch options, as on its command line', _safe(Field(
        str, _slurm_extra, "must be sbatch options as on its command line, each '--name=value' "
        "or '--name', e.g. '--account=abc --qos=high'"))),
    'launcher_wait': _doc("wait for the jobs and write the summary; False ('slurm'): a last job "
                          'gathers', _safe(Field(
                              bool, lambda v, c: v or c.launcher == 'slurm',
                              "must be True or False; False needs launcher='slurm' (local jobs "
                              'are started by the waiting launcher)'))),
    'job_retries': _doc("requeues at a job's time limit and resubmissions of a failed job",
                        _safe(_int_at_least(0))),
}


# Derived from FIELDS (one source of truth): the fields that change no number, and those the
# source pretraining depends on (its cache key, with the run's seed).
SAFE_FIELDS = tuple(f for f, spec in FIELDS.items() if not spec.numbers)
PRETRAIN_FIELDS = tuple(f for f, spec in FIELDS.items() if spec.pretraining)


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
