"""Model registry: `create(name, num_classes)` returns a Flax linen module."""

import numpy as np

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
  (EfficientNet, the MobileNets); ignored by models without them.
  kwargs: the module's fields; a model field (MODEL_FIELDS: `alpha`, `minimalistic`) that
  `name` does not take is dropped at its default and refused otherwise.
  """
  constructor, _ = _entry(name)
  if num_classes is None and name == 'small_cnn':
    raise ValueError('small_cnn has no separate base model; pass num_classes.')
  if depthwise_impl is not None and has_depthwise(name):
    kwargs['depthwise_impl'] = depthwise_impl
  for field, default in FIELD_DEFAULTS.items():
    if field in kwargs and field not in MODEL_FIELDS.get(name, ()):
      value = kwargs.pop(field)
      if value != default:
        raise ValueError(f'{field}={value!r}: {field_users(field)}; model {name!r} takes none: '
                         f'leave it at {default!r}.')
  return constructor(num_classes=num_classes, **kwargs)


# Model fields of the config beyond the model's name (configs/base.py), their defaults, and the
# models that take them: alpha = Keras's width multiplier, minimalistic = MobileNetV3 without
# squeeze-excite and hard-swish.
FIELD_DEFAULTS = {'alpha': 1.0, 'minimalistic': False}
MODEL_FIELDS = {'mobilenet_v2': ('alpha',), 'mobilenet_v3_small': ('alpha', 'minimalistic'),
                'mobilenet_v3_large': ('alpha', 'minimalistic')}


def field_users(field: str) -> str:
  """'alpha is a field of mobilenet_v2, ...': which models take model field `field`."""
  users = [n for n, fields in MODEL_FIELDS.items() if field in fields]
  return f'{field} is a field of {", ".join(users)}'


def model_fields(name: str, config) -> dict:
  """{field: value} of the model fields `name` takes, from `config` (a field it lacks: the
  default)."""
  _entry(name)
  return {f: config.get(f, FIELD_DEFAULTS[f]) if hasattr(config, 'get') else
          getattr(config, f, FIELD_DEFAULTS[f]) for f in MODEL_FIELDS.get(name, ())}


# Keras's ImageNet weights (include_top=False): the models that have them, and the fields they
# exist for (keras.applications: MobileNetV2 per alpha and input size; MobileNetV3 at 224, loaded
# for any size, minimalistic at alpha 1.0 only; the others at 224, loaded for any size).
IMAGENET_MODELS = ('efficientnet_b0', 'efficientnet_b2', 'mobilenet_v2', 'mobilenet_v3_small',
                   'mobilenet_v3_large', 'resnet50')
MOBILENET_V2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_V2_IMAGENET_SIZES = (96, 128, 160, 192, 224)
MOBILENET_V3_IMAGENET_ALPHAS = (0.75, 1.0)


def imagenet_problem(name: str, alpha=1.0, minimalistic=False, image_size=224):
  """Why Keras has no ImageNet weights for `name` with these fields (one line), or None."""
  if name not in IMAGENET_MODELS:
    return (f'No ImageNet weights for {name!r}; models with Keras ImageNet weights: '
            f'{", ".join(IMAGENET_MODELS)}')
  if name == 'mobilenet_v2' and alpha not in MOBILENET_V2_IMAGENET_ALPHAS:
    return (f'Keras has ImageNet weights for mobilenet_v2 at alpha '
            f'{or_words(MOBILENET_V2_IMAGENET_ALPHAS)}, not alpha={alpha!r}')
  if name == 'mobilenet_v2' and image_size not in MOBILENET_V2_IMAGENET_SIZES:
    return (f'Keras has ImageNet weights for mobilenet_v2 at input sizes '
            f'{or_words(MOBILENET_V2_IMAGENET_SIZES)}, not image_size={image_size!r}')
  if name.startswith('mobilenet_v3'):
    ok = (1.0,) if minimalistic else MOBILENET_V3_IMAGENET_ALPHAS
    if alpha not in ok:
      return (f'Keras has ImageNet weights for {name}{" minimalistic" if minimalistic else ""} '
              f'at alpha {or_words(ok)}, not alpha={alpha!r}')
  return None


def or_words(values):
  """The values as one phrase: 'a, b or c'."""
  values = [repr(v) for v in values]
  return values[0] if len(values) == 1 else ', '.join(values[:-1]) + ' or ' + values[-1]


_DEPTHWISE = ('efficientnet_b0', 'efficientnet_b2', 'mobilenet_v2', 'mobilenet_v3_small',
              'mobilenet_v3_large')


def has_depthwise(name: str) -> bool:
  """Whether model `name` has depthwise convolutions (and so a `depthwise_impl`)."""
  _entry(name)
  return name in _DEPTHWISE


def default_input_shape(name: str) -> tuple[int, int, int]:
  return _entry(name)[1]


# Models whose dense layers fix the input size (the small CNN's Flatten -> Dense(128)).
_FIXED_SIZE = {'small_cnn': 32}


# Pixel range each model takes: data arrive in [0, 1] and are multiplied by this.
# EfficientNet and MobileNetV3 take [0, 255] like Keras (their Rescaling is part of the model);
# MobileNetV2 and ResNet50 take [0, 255] through Keras's preprocess_input (PREPROCESS).
PIXEL_SCALE = {'small_cnn': 1.0, 'efficientnet_b0': 255.0, 'efficientnet_b2': 255.0,
               'mobilenet_v2': 255.0, 'mobilenet_v3_small': 255.0, 'mobilenet_v3_large': 255.0,
               'resnet50': 255.0}
# keras.applications's preprocess_input mode of the models whose Keras graph has no
# preprocessing layer: 'tf' = [-1, 1] (mobilenet_v2), 'caffe' = RGB -> BGR minus the ImageNet
# mean pixel, unscaled (resnet50). The input pipeline applies it after PIXEL_SCALE.
PREPROCESS = {'mobilenet_v2': 'tf', 'resnet50': 'caffe'}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def pixel_scale(name: str) -> float:
  _entry(name)
  return PIXEL_SCALE[name]


def preprocess_input(name: str, x):
  """Keras's `preprocess_input` of model `name` on a float32 batch (N, H, W, 3) in [0, 255]
  (numpy, returned as a new array); the identity for models without PREPROCESS."""
  _entry(name)
  mode = PREPROCESS.get(name)
  if mode == 'tf':
    return x / np.float32(127.5) - np.float32(1.0)
  if mode == 'caffe':
    return x[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, np.float32)
  return x


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

# keras.applications's edge models (tljax/models/mobilenet_v2.py, mobilenet_v3.py, resnet.py).
from tljax.models.mobilenet_v2 import MobileNetV2  # pylint: disable=g-import-not-at-top,wrong-import-position
from tljax.models.mobilenet_v3 import MobileNetV3  # pylint: disable=g-import-not-at-top,wrong-import-position
from tljax.models.resnet import ResNet50  # pylint: disable=g-import-not-at-top,wrong-import-position

register('mobilenet_v2', MobileNetV2, (224, 224, 3))
register('mobilenet_v3_small', functools.partial(MobileNetV3, model_type='small'), (224, 224, 3))
register('mobilenet_v3_large', functools.partial(MobileNetV3, model_type='large'), (224, 224, 3))
register('resnet50', ResNet50, (224, 224, 3))
