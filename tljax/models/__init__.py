"""Model registry: `create(name, num_classes)` returns a Flax linen module."""

from tljax.models.base import FROZEN_DROPOUT, KerasLayer, TRAIN_MODE_KINDS, active_dropout_layers
from tljax.models.small_cnn import SmallCNN

# name -> (constructor, default input shape (H, W, C))
_MODELS = {
    'small_cnn': (SmallCNN, (32, 32, 1)),
}

def names() -> tuple[str, ...]:
  return tuple(sorted(_MODELS))


def register(name, constructor, input_shape):
  _MODELS[name] = (constructor, tuple(input_shape))


def _entry(name):
  if name not in _MODELS:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(names())}.')
  return _MODELS[name]


def create(name: str, num_classes=None, depthwise_impl=None, **kwargs):
  """The linen module for `name`; `num_classes=None` gives the base model alone.

  depthwise_impl: 'auto', 'slices' or 'grouped' for models with depthwise convolutions
  (EfficientNet); ignored by models without them.
  """
  constructor, _ = _entry(name)
  if num_classes is None and name == 'small_cnn':
    raise ValueError('small_cnn has no separate base model; pass num_classes.')
  if depthwise_impl is not None and has_depthwise(name):
    kwargs['depthwise_impl'] = depthwise_impl
  return constructor(num_classes=num_classes, **kwargs)


def has_depthwise(name: str) -> bool:
  """Whether model `name` has depthwise convolutions (and so a `depthwise_impl`)."""
  _entry(name)
  return name.startswith('efficientnet')


def default_input_shape(name: str) -> tuple[int, int, int]:
  return _entry(name)[1]


# Models whose dense layers fix the input size (the small CNN's Flatten -> Dense(128)).
_FIXED_SIZE = {'small_cnn': 32}


# Pixel range each model takes: data arrive in [0, 1] and are multiplied by this.
# EfficientNet takes [0, 255] like Keras (its Rescaling(1/255) is part of the model).
PIXEL_SCALE = {'small_cnn': 1.0, 'efficientnet_b0': 255.0, 'efficientnet_b2': 255.0}


def pixel_scale(name: str) -> float:
  _entry(name)
  return PIXEL_SCALE[name]


def fixed_image_size(name: str):
  """The only input size `name` accepts, or None when any size at least min_image_size works."""
  _entry(name)
  return _FIXED_SIZE.get(name)


def min_image_size(name: str) -> int:
  """The smallest input side `name` takes (5 stride-2 stages need >= 32 for EfficientNet)."""
  _entry(name)
  return _FIXED_SIZE.get(name, 32)


# EfficientNets (tljax/models/efficientnet.py); the thesis fed 224x224 to both.
import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
from tljax.models.efficientnet import DEPTHWISE_IMPLS, EfficientNet, resolve_depthwise_impl  # pylint: disable=g-import-not-at-top,wrong-import-position

register('efficientnet_b0', functools.partial(EfficientNet, variant='b0'), (224, 224, 3))
register('efficientnet_b2', functools.partial(EfficientNet, variant='b2'), (224, 224, 3))
