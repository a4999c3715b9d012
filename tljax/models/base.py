"""What every tljax model provides: its layers listed in Keras order."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class KerasLayer:
  """One layer of a model, as Keras would list it in `model.layers`.

  name: the Keras layer name, also the top-level key of its variables.
  kind: the Keras class name ('Conv2D', 'DepthwiseConv2D', 'BatchNormalization',
    'Dense', 'Dropout', 'MaxPooling2D', 'Flatten', 'Activation', ...).
  weighted: whether the layer owns variables ('params' and/or 'batch_stats').
  base: whether the layer belongs to the pretrained base (False for the
    classification head that tljax attaches for the target task).
  """
  name: str
  kind: str
  weighted: bool
  base: bool = True


# Keras layer kinds whose behaviour differs between training and inference.
TRAIN_MODE_KINDS = ('BatchNormalization', 'Dropout')
