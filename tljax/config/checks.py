"""Config validation from one table of fields and accepted ranges: a bad value fails before work."""

import math

from tljax import models
from tljax.config import accounting_fields
from tljax.config import run_fields
from tljax.config import search_fields
from tljax.config.fields import Field, doc, int_at_least, is_kind, number_in, one_of, pre, safe
from tljax.data import datasets
from tljax.data import validation
from tljax.training import freezing

PRETRAINED = ('source', 'imagenet', 'none')
NEW_HEAD = ('auto', 'always', 'never')
# Seeds become a 32-bit JAX key: 2**32 and above would silently repeat smaller seeds.
MAX_SEED = 2**32 - 1
# Re-exported from their owners (tests and docs read them here).
MAX_E_MAC_J = accounting_fields.MAX_E_MAC_J
DEVICE_DTYPES = accounting_fields.DEVICE_DTYPES
BUDGET_MEMORY = accounting_fields.BUDGET_MEMORY
LAUNCHERS = run_fields.LAUNCHERS


def _class_list(v, c):
  return all(is_kind(int, x) and x >= 0 for x in v) and len(set(v)) == len(v)


def _cases(v, c):
  """Non-empty, distinct entries, each an int, a case string or a non-empty tuple of
  (regex, label) string pairs (hashable: cases key records; validate_cases checks the rest)."""
  def one(x):
    if isinstance(x, tuple):
      return len(x) > 0 and all(isinstance(r, tuple) and len(r) == 2
                                and all(isinstance(s, str) for s in r) for r in x)
    return is_kind(int, x) or isinstance(x, str)
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


# Every field of configs/base.py, in checking order (`model` first: other ranges depend on it):
# the model's, the data's and training's here, then each concern's own table (the accounting's,
# the run's; a new concern adds its table to this dict). A new field must be added to one of
# them with its one-line description (tests/test_checks.py and
# tests/test_docs.py fail otherwise; then regenerate docs/configuration.md, docs/development.md
# says how); free-form fields have ok=None. A check that needs the data loaded (e.g. batch_size
# against the dataset) is in check_data below.
FIELDS = {
    'model': doc("the network: small_cnn (the thesis's CNN) or a Keras application "
                  '(efficientnet_b0/b2, mobilenet_v2/v3_small/v3_large, resnet50)',
                  pre(Field(
                      str, lambda v, c: v in models.names(),
                      lambda c: f'unknown model; known models: {", ".join(models.names())}'))),
    'name': doc('the experiment\'s name; the default workdir is artifacts/<name>', safe(Field(
        str, None, 'any string (the default workdir is artifacts/<name>)'))),
    'image_size': doc('input side in pixels', pre(Field(int, _image_size, _image_size_accepted))),
    'channels': doc('input channels: 1 (grayscale) or 3 (RGB), as the model takes', pre(Field(
        int, lambda v, c: v == models.default_input_shape(c.model)[-1], _channels_accepted))),
    'pretrained': doc("starting weights: 'source' (trained on source_dataset, cached), "
                       "'imagenet' (Keras's weights) or 'none' (random)", Field(
                           str, lambda v, c: v in PRETRAINED and (
                               v != 'imagenet' or c.model in models.IMAGENET_MODELS),
                           f"must be one of {PRETRAINED} ('imagenet' needs a model with Keras "
                           f"ImageNet weights: {', '.join(models.IMAGENET_MODELS)})")),
    'alpha': doc("the MobileNets' width multiplier (Keras's alpha; 1.0 = the paper's widths); "
                  'the other models take none and keep 1.0', pre(Field(
                      (int, float), _alpha, _alpha_accepted))),
    'minimalistic': doc('MobileNetV3 without squeeze-excite and hard-swish, 3x3 kernels '
                         "(Keras's minimalistic); the other models keep False", pre(Field(
                             bool, lambda v, c: (
                                 not v or 'minimalistic' in models.MODEL_FIELDS.get(c.model, ())),
                             lambda c: 'must be True or False; '
                             f"{models.field_users('minimalistic')}; model {c.model!r} takes "
                             'none: leave it False'))),
    'source_dataset': doc("the dataset pretrained on when pretrained='source'",
                           pre(_dataset('source'))),
    'source_classes': doc('labels of the source dataset kept, remapped to 0..k-1 in this order',
                           pre(Field((tuple, list), _class_list,
                                      'must be a tuple of distinct labels >= 0 (() = all)'))),
    'target_dataset': doc('the dataset every case is fine-tuned and tested on',
                           _dataset('target')),
    'target_classes': doc('labels of the target dataset kept, remapped to 0..k-1 in this order',
                           Field((tuple, list), _class_list,
                                 'must be a tuple of distinct labels >= 0 (() = all)')),
    # The folders' paths change no number: their contents are fingerprinted (the data identity).
    'source_data_dir': doc("the source image folder's root (image_folder, intel_scenes)",
                            safe(Field(str, None,
                                        "the source image folder's root ('' for TFDS/digits)"))),
    'target_data_dir': doc("the target image folder's root (image_folder, intel_scenes)",
                            safe(Field(str, None,
                                        "the target image folder's root ('' for TFDS/digits)"))),
    'data_dir': doc("TFDS's data directory", safe(Field(
        str, None, "TFDS's data directory ('' = ~/tensorflow_datasets)"))),
    'data_memory_mb': doc('a prepared image-folder split larger than this is read from a memory '
                           'map of its cache file instead of RAM', safe(number_in(
                               0, math.inf, lo_open=False, hi_open=True,
                               what=' (MiB; 0 = half the available RAM)'))),
    'cache_dir': doc('pretrained models, ImageNet weights, prepared image folders and compiled '
                      'steps, reused across workdirs', safe(Field(
                          str, None, 'a directory for pretrained models and weights'))),
    'pretrain_epochs': doc('epochs of source pretraining (every layer trains)', pre(Field(
        int, lambda v, c: v >= 1 or (v >= 0 and c.pretrained != 'source'),
        "must be an int >= 1 (>= 0 when pretrained is not 'source')"))),
    'pretrain_learning_rate': doc("Adam's learning rate in source pretraining",
                                   pre(number_in(0, 10, lo_open=True, hi_open=True))),
    # Not in the pretraining's cache key itself: the seed it selects is (pretrain.source_seed).
    'pretrain_seed': doc('seed of the one source pretraining that every seed fine-tunes (as '
                          'with ImageNet weights); -1: each seed pretrains its own', Field(
                              int, lambda v, c: -1 <= v <= MAX_SEED,
                              f'must be -1 (each seed its own) or an int in [0, {MAX_SEED}]')),
    'bn_momentum': doc('BatchNorm moving-average momentum; use 0.9 when a run has only a few '
                        'hundred steps', pre(number_in(
                            0, 1, lo_open=False, hi_open=True,
                            what=' (BatchNorm moving-average momentum; Keras: 0.99)'))),
    'new_head': doc("re-initialise the classifier (the last Dense): 'auto' keeps the source's "
                     'only for the same dataset and classes', one_of(NEW_HEAD)),
    'frozen_dropout': doc("frozen Dropout layers in training: 'keras' drop units (the thesis's "
                           "runs), 'off' inference mode", one_of(models.FROZEN_DROPOUT)),
    'depthwise_impl': doc("EfficientNet's depthwise convolutions: 'auto' (slices on CPU, grouped "
                           'on GPU/TPU); the FLOPs reported do not depend on it',
                           one_of(models.DEPTHWISE_IMPLS)),
    # The sweep's lists: each run's own case (its rules) and seed are in its fingerprint, so
    # cases and seeds may be added to a finished workdir (only the new runs train).
    'cases': doc('the freeze cases, each trained once per seed (docs/cases.md)', safe(Field(
        (tuple, list), _cases, 'must be a non-empty tuple of distinct cases, each an '
        "int N, a string 'last:N', 'bias:N', 'bias_batchstats:N', 'norm:N', 'block:NAME', "
        "'layers:A..B', or a tuple of (regex, label) rules"))),
    'case_counting': doc("what N counts: 'model' the last N layers of the model, 'base' the "
                          'head plus the last N layers of the base', one_of(freezing.COUNTINGS)),
    'epochs': doc('fine-tuning epochs of each run', int_at_least(1)),
    'steps_per_epoch': doc('at most this many steps per epoch', pre(int_at_least(
        0, ' (0 = whole epochs)'))),
    'batch_size': doc('train batch (the last partial batch is dropped)', pre(int_at_least(1))),
    'eval_batch_size': doc('evaluation batch (the last one is padded and masked)',
                            int_at_least(1)),
    'learning_rate': doc("Adam's learning rate in fine-tuning",
                          number_in(0, 10, lo_open=True, hi_open=True)),
    'seeds': doc('every case trains once per seed; the summary gives means and 95 % intervals '
                  'over them', safe(Field(
                      (tuple, list), lambda v, c: len(v) > 0 and len(set(v)) == len(v) and all(
                          is_kind(int, s) and 0 <= s <= MAX_SEED for s in v),
                      f'must be a non-empty tuple of distinct ints in [0, {MAX_SEED}]'))),
    'prefix_cache': doc('train on the cached output of the frozen layers below a case where the '
                         'cost model says it saves time (same numbers)',
                         Field(bool, lambda v, c: True, 'must be True or False')),
    **search_fields.FIELDS,
    **accounting_fields.FIELDS,
    **run_fields.FIELDS,
}


# Derived from FIELDS (one source of truth): the fields that change no number, and those the
# source pretraining depends on (its cache key, with the run's seed).
SAFE_FIELDS = tuple(f for f, spec in FIELDS.items() if not spec.numbers)
PRETRAIN_FIELDS = tuple(f for f, spec in FIELDS.items() if spec.pretraining)


def check_field(config, field):
  """Raises ValueError 'config.FIELD=VALUE: accepted' when `field` is outside its range."""
  spec = FIELDS[field]
  v = config[field]
  if is_kind(spec.kind, v) and (spec.ok is None or spec.ok(v, config)):
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
  held = len(validation.held_out(train_arrays.labels, config.get('validation_fraction', 0), 0))
  if config.batch_size > len(train_arrays) - held:
    raise ValueError(f'config.batch_size={config.batch_size}: must be at most the '
                     f'{len(train_arrays) - held} training examples of {train_arrays.name!r}'
                     + (f' left after holding out {held} for validation.' if held else '.'))


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
