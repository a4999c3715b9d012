"""Freeze cases: which Keras layers train, as ordered (regex, label) rules over parameter paths."""

import re

from absl import logging
import flax
import optax

TRAINABLE, FROZEN = 'trainable', 'frozen'
COUNTINGS = ('model', 'base')


def case_layers(layers, n, counting='model'):
  """Names of the trainable layers of case `n`, in Keras order.

  counting='model': the last n layers of the whole model (1..len(layers)),
    the thesis's small-model cases (Figure 3.1).
  counting='base': the head (layers with base=False) plus the last n layers of
    the pretrained base (0..number of base layers), the thesis's Table 3.1.
  """
  if counting not in COUNTINGS:
    raise ValueError(f'Unknown case counting {counting!r}; known: {COUNTINGS}.')
  if isinstance(n, bool) or not isinstance(n, int):
    raise ValueError(f'A case is an int number of trainable layers, got {n!r}.')
  if counting == 'model':
    if not 1 <= n <= len(layers):
      raise ValueError(f'Case {n} is out of range: the model has {len(layers)} layers, so a case '
                       f'trains the last 1..{len(layers)} of them.')
    chosen = layers[len(layers) - n:]
  else:
    base = [l for l in layers if l.base]
    head = [l for l in layers if not l.base]
    if not 0 <= n <= len(base):
      raise ValueError(f'Case {n} is out of range: the base model has {len(base)} layers, so a '
                       f'case trains the head plus the last 0..{len(base)} base layers.')
    chosen = base[len(base) - n:] + head
  if not any(l.weighted for l in chosen):
    raise ValueError(f'Case {n} trains no parameter: its trainable layers '
                     f'({", ".join(l.name for l in chosen) or "none"}) have no weights'
                     + ('; this model has no separate head, so case 0 of counting '
                        "'base' trains nothing" if not any(not l.base for l in layers) else '')
                     + '.')
  return tuple(l.name for l in chosen)


def case_rules(trainable_names):
  """Ordered (regex, label) rules, big_vision style: trainable layers first, then '.*'."""
  rules = [(re.escape(name) + '/.*', TRAINABLE) for name in trainable_names]
  return rules + [('.*', FROZEN)]


def label_tree(params, rules, *, log=True):
  """'trainable'/'frozen' for every leaf of `params`: the first rule whose regex fullmatches
  the leaf's path 'layer/.../param' wins. A leaf that no rule covers is an error. Rules for
  weightless layers (dropout, pooling) match nothing and are harmless."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  compiled = [(re.compile(rx), rx, label) for rx, label in rules]
  for _, rx, label in compiled:
    if label not in (TRAINABLE, FROZEN):
      raise ValueError(f'Rule {rx!r} has label {label!r}; labels are {TRAINABLE!r}, {FROZEN!r}.')
  labels = {}
  for path in flat:
    for pattern, rx, label in compiled:
      if pattern.fullmatch(path):
        labels[path] = label
        if log:
          logging.info('freeze: %-50s %-9s (rule %r)', path, label, rx)
        break
    else:
      raise ValueError(f'Parameter {path!r} is matched by no freeze rule; rules: {rules}.')
  return flax.traverse_util.unflatten_dict(labels, sep='/')


def trainable_layers_with_params(params, trainable_names):
  """The trainable layers that own parameters (weightless layers train nothing)."""
  return tuple(n for n in trainable_names if n in params)


def make_optimizer(tx, labels):
  """`tx` on trainable parameters, `optax.set_to_zero()` on frozen ones."""
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)
