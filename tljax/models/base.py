"""What every tljax model provides: its layers listed in Keras order."""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class KerasLayer:
  """One layer of a model, as Keras would list it in `model.layers`.

  name: the Keras layer name, also the top-level key of its variables.
  kind: the Keras class name ('Conv2D', 'DepthwiseConv2D', 'BatchNormalization',
    'Dense', 'Dropout', 'MaxPooling2D', 'Flatten', 'Activation', ...).
  weighted: whether the layer owns variables ('params' and/or 'batch_stats').
  base: whether the layer belongs to the pretrained base (False for the
    classification head that tljax attaches for the target task).
  block: the model's block the layer belongs to ('block1', 'stem', 'head', ...; '' = none),
    for the 'block:NAME' freeze cases (`blocks`).
  activation: the activation Keras fuses into a Conv2D/Dense layer, or an Activation or ReLU
    layer's function: 'relu', 'relu6', 'swish', 'sigmoid', 'hard_swish' or 'hard_sigmoid'
    (MobileNetV3's relu6(x + 3) / 6, its ReLU layer standing for the whole); None = linear.
  inputs: the layers whose outputs this layer takes, where they are not just the previous
    layer's (ResNet's shortcut convolution takes the block's input); () = the previous layer.
  """
  name: str
  kind: str
  weighted: bool
  base: bool = True
  block: str = ''
  activation: Optional[str] = None
  inputs: tuple[str, ...] = ()


# The collection each model sows every Keras layer's output into (flax's 'intermediates': only
# kept when a caller makes it mutable, never by `init` or the train and eval steps).
LAYER_OUTPUTS = 'intermediates'


# Suffix of the sown names (a variable may not share its name with the layer's submodule).
OUTPUT_SUFFIX = ':output'


def record_output(module, name: str, x) -> None:
  """Sows layer `name`'s output `x` into LAYER_OUTPUTS as `name + OUTPUT_SUFFIX` (a no-op
  unless that collection is mutable)."""
  module.sow(LAYER_OUTPUTS, name + OUTPUT_SUFFIX, x)


def blocks(layers) -> dict[str, tuple[str, ...]]:
  """The blocks of a model's Keras `layers`: ordered {block name: its layer names}, in Keras
  order; layers without a block are left out."""
  out = {}
  for l in layers:
    if l.block:
      out.setdefault(l.block, []).append(l.name)
  return {name: tuple(names) for name, names in out.items()}


# Keras layer kinds whose behaviour differs between training and inference.
TRAIN_MODE_KINDS = ('BatchNormalization', 'Dropout')

# What a frozen Dropout layer does in training (`frozen_dropout` of the models and the config):
# 'keras': drops units, as Keras 3 runs a Dropout layer with trainable=False when the model is
#   called with training=True (only BatchNormalization switches to inference when frozen);
# 'off': inference mode, as Keras's `base_model(x, training=False)` and PyTorch's eval().
FROZEN_DROPOUT = ('off', 'keras')


def dropout_on(model, name: str, train: bool) -> bool:
  """Whether `model`'s Dropout layer `name` drops units in this call."""
  if model.frozen_dropout not in FROZEN_DROPOUT:
    raise ValueError(f'frozen_dropout={model.frozen_dropout!r}: must be one of {FROZEN_DROPOUT}.')
  return train and (model.frozen_dropout == 'keras' or name not in model.frozen)


def active_dropout_layers(model) -> tuple[int, ...]:
  """Indices of the Dropout layers that drop units when `model` trains (random per step)."""
  return tuple(i for i, l in enumerate(model.keras_layers())
               if l.kind == 'Dropout' and dropout_on(model, l.name, True))
