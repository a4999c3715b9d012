"""Config validation: a bad value fails before any work, naming itself and what is accepted."""

from tljax import data
from tljax import freezing
from tljax import models

PRETRAINED = ('source', 'imagenet', 'none')
NEW_HEAD = ('auto', 'always', 'never')


def _positive_int(config, field):
  v = config[field]
  if isinstance(v, bool) or not isinstance(v, int) or v < 1:
    raise ValueError(f'config.{field}={v!r}: must be a positive int.')


def validate(config):
  """Raises ValueError naming the first bad field of `config`."""
  if config.model not in models.names():
    raise ValueError(f'config.model={config.model!r}: unknown model; known models: '
                     f'{", ".join(models.names())}.')
  for field in ('source_dataset', 'target_dataset'):
    name = config[field]
    if field == 'source_dataset' and config.pretrained != 'source':
      continue
    if name not in data.names():
      raise ValueError(f'config.{field}={name!r}: unknown dataset; known datasets: '
                       f'{", ".join(data.names())}.')
  if config.pretrained not in PRETRAINED:
    raise ValueError(f'config.pretrained={config.pretrained!r}: must be one of {PRETRAINED}.')
  if config.pretrained == 'imagenet' and not config.model.startswith('efficientnet'):
    raise ValueError(f"config.pretrained='imagenet' needs an EfficientNet model, not "
                     f'{config.model!r}.')
  if config.new_head not in NEW_HEAD:
    raise ValueError(f'config.new_head={config.new_head!r}: must be one of {NEW_HEAD}.')
  if config.frozen_dropout not in models.FROZEN_DROPOUT:
    raise ValueError(f'config.frozen_dropout={config.frozen_dropout!r}: must be one of '
                     f'{models.FROZEN_DROPOUT}.')
  if config.depthwise_impl not in models.DEPTHWISE_IMPLS:
    raise ValueError(f'config.depthwise_impl={config.depthwise_impl!r}: must be one of '
                     f'{models.DEPTHWISE_IMPLS}.')
  if config.case_counting not in freezing.COUNTINGS:
    raise ValueError(f'config.case_counting={config.case_counting!r}: must be one of '
                     f'{freezing.COUNTINGS}.')
  for field in ('image_size', 'batch_size', 'eval_batch_size', 'epochs', 'log_every_steps'):
    _positive_int(config, field)
  if config.pretrained == 'source':
    _positive_int(config, 'pretrain_epochs')
  if config.steps_per_epoch < 0:
    raise ValueError(f'config.steps_per_epoch={config.steps_per_epoch!r}: must be >= 0 '
                     '(0 = whole epochs).')
  if config.checkpoint_every_steps < 0:
    raise ValueError(f'config.checkpoint_every_steps={config.checkpoint_every_steps!r}: must be '
                     '>= 0 (0 = no checkpoints).')
  if config.channels not in (1, 3):
    raise ValueError(f'config.channels={config.channels!r}: must be 1 (grayscale) or 3 (RGB).')
  want = models.default_input_shape(config.model)[-1]
  if config.channels != want:
    raise ValueError(f'config.channels={config.channels}: model {config.model!r} takes '
                     f'{want}-channel images.')
  min_size = models.min_image_size(config.model)
  if config.image_size < min_size:
    raise ValueError(f'config.image_size={config.image_size}: model {config.model!r} needs '
                     f'images of at least {min_size}x{min_size}.')
  if models.fixed_image_size(config.model) and config.image_size != models.fixed_image_size(
      config.model):
    raise ValueError(f'config.image_size={config.image_size}: model {config.model!r} takes '
                     f'exactly {models.fixed_image_size(config.model)}x'
                     f'{models.fixed_image_size(config.model)} images (its dense layer is sized '
                     'for that).')
  if not config.cases:
    raise ValueError('config.cases is empty: give at least one case.')
  if not 0 < config.learning_rate < 10 or not 0 < config.pretrain_learning_rate < 10:
    raise ValueError(f'config.learning_rate={config.learning_rate!r} / '
                     f'pretrain_learning_rate={config.pretrain_learning_rate!r}: must be in '
                     '(0, 10).')
  if not config.e_mac_j > 0:
    raise ValueError(f'config.e_mac_j={config.e_mac_j!r}: must be a positive energy in J.')
  for c in config.cases:
    if isinstance(c, bool) or not isinstance(c, int):
      raise ValueError(f'config.cases={tuple(config.cases)!r}: every case is an int number of '
                       'trainable layers.')
  if len(set(config.cases)) != len(config.cases):
    raise ValueError(f'config.cases={tuple(config.cases)!r}: a case is listed twice.')
  _validate_run_fields(config)


def _validate_run_fields(config):
  """Fields that would otherwise fail inside NumPy, JAX or jax.distributed."""
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not (
      0 <= config.seed < 2**63):
    raise ValueError(f'config.seed={config.seed!r}: must be an int in [0, 2**63) (NumPy shuffles '
                     'with it, JAX keys it as a 64-bit int).')
  if not 0 <= config.bn_momentum < 1:
    raise ValueError(f'config.bn_momentum={config.bn_momentum!r}: must be in [0, 1) (Keras: '
                     '0.99).')
  _positive_int(config, 'num_processes')
  if config.num_processes > 1:
    if not 0 <= config.process_id < config.num_processes:
      raise ValueError(f'config.process_id={config.process_id!r}: must be in '
                       f'[0, config.num_processes={config.num_processes}).')
    if not config.coordinator_address:
      raise ValueError(f'config.num_processes={config.num_processes} needs '
                       "config.coordinator_address='host:port' (process 0's).")


def validate_cases(config, layers):
  """Every case of `config.cases` against the model's Keras `layers`: in range, and training
  at least one parameter. The error names the fields that chose the case."""
  for n in config.cases:
    try:
      freezing.case_layers(layers, n, config.case_counting)
    except ValueError as e:
      raise ValueError(f'config.cases={tuple(config.cases)!r} with config.case_counting='
                       f'{config.case_counting!r} and config.model={config.model!r}: {e}') from None
