"""Freeze cases: which parameters train and which layers run in training mode, as ordered
(regex, label) rules over parameter paths, for every case family."""

import dataclasses
import hashlib
import re

from absl import logging
import flax
import optax

from tljax.models.base import blocks as layer_blocks

TRAINABLE, FROZEN = 'trainable', 'frozen'
COUNTINGS = ('model', 'base')
FAMILIES = ('last', 'bias', 'bias_batchstats', 'norm', 'block', 'layers', 'rules')
CASE_FORMS = ("an int N or 'last:N' (the last N layers train), 'bias:N' (their biases and "
              "BatchNorm shifts, every BatchNorm's statistics frozen), 'bias_batchstats:N' (the "
              "same, their BatchNorms on batch statistics), 'norm:N' (their BatchNorm scales and "
              "shifts), 'block:NAME', 'layers:A..B' (Keras layer names or 1-based indices, "
              "inclusive), each plus the head, or a tuple of (regex, label) rules over "
              f"'layer/param' paths with labels {TRAINABLE!r}/{FROZEN!r}")
# The families over the last N layers (N counted as `case_counting` says).
_SUFFIX_FAMILIES = ('last', 'bias', 'bias_batchstats', 'norm')
# Parameters of a layer kind, where no params tree is at hand (checks before initialising).
NOMINAL_PARAMS = {'Conv2D': ('kernel', 'bias'), 'DepthwiseConv2D': ('kernel', 'bias'),
                  'Dense': ('kernel', 'bias'), 'BatchNormalization': ('scale', 'bias')}


def case_layers(layers, n, counting='model'):
  """Names of the trainable layers of case `n`, in Keras order.

  counting='model': the last n layers of the whole model (1..len(layers)),
    the thesis's small-model cases (Figure 3.1).
  counting='base': the head (layers with base=False) plus the last n layers of
    the pretrained base (0..number of base layers), the thesis's Table 3.1.
  """
  if isinstance(n, bool) or not isinstance(n, int):
    raise ValueError(f'A case is an int number of trainable layers, got {n!r}.')
  chosen = _suffix(layers, n, counting, f'Case {n}')
  if not any(l.weighted for l in chosen):
    raise ValueError(f'Case {n} trains no parameter: its trainable layers '
                     f'({", ".join(l.name for l in chosen) or "none"}) have no weights'
                     + ('; this model has no separate head, so case 0 of counting '
                        "'base' trains nothing" if not any(not l.base for l in layers) else '')
                     + '.')
  return tuple(l.name for l in chosen)


def _suffix(layers, n, counting, label):
  """The layers that 'last:n' trains under `counting` (KerasLayer objects, Keras order)."""
  if counting not in COUNTINGS:
    raise ValueError(f'Unknown case counting {counting!r}; known: {COUNTINGS}.')
  layers = list(layers)
  if counting == 'model':
    if not 1 <= n <= len(layers):
      raise ValueError(f'{label} is out of range: the model has {len(layers)} layers, so a case '
                       f'trains the last 1..{len(layers)} of them.')
    return layers[len(layers) - n:]
  base = [l for l in layers if l.base]
  head = [l for l in layers if not l.base]
  if not 0 <= n <= len(base):
    raise ValueError(f'{label} is out of range: the base model has {len(base)} layers, so a '
                     f'case trains the head plus the last 0..{len(base)} base layers.')
  return base[len(base) - n:] + head


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
          logging.debug('freeze: %-50s %-9s (rule %r)', path, label, rx)
        break
    else:
      raise ValueError(f'Parameter {path!r} is matched by no freeze rule; rules: {rules}.')
  return flax.traverse_util.unflatten_dict(labels, sep='/')


def make_optimizer(tx, labels):
  """`tx` on trainable parameters, `optax.set_to_zero()` on frozen ones."""
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


@dataclasses.dataclass(frozen=True)
class CaseSpec:
  """One freeze case, resolved against a model's Keras layers.

  name: canonical string ('last:9', 'bias:23', 'bias_batchstats:23', 'norm:9', 'block:block3',
    'layers:A..B' with layer names, 'rules:RX;RX;...' with frozen rules written '!RX').
  family: one of FAMILIES.
  rules: ordered (regex, label) rules over 'layer/param' paths, ending in ('.*', 'frozen').
  active_layers: the Keras layers that run in training mode (BatchNorm on batch statistics and
    updating its moving ones; Dropout dropping units), Keras order: the model's `frozen` set is
    every other layer. A layer may own a trainable parameter and stay out: the BatchNorms of
    'bias:N' train their shift in inference mode (moving statistics, an affine map).
  """
  name: str
  family: str
  rules: tuple
  active_layers: tuple


def case_spec(case, layers, counting='model', params=None) -> CaseSpec:
  """The CaseSpec of `case` (an int, a case string or a tuple of (regex, label) rules).

  last:N (= int N): every parameter of `case_layers(layers, N, counting)`; they are active.
  bias:N (TinyTL-B): the parameters named 'bias' (conv/dense biases, BatchNorm shifts) of the
    layers that last:N trains, plus every parameter of the head; bias_batchstats:N: the same
    parameters; norm:N: likewise BatchNorm 'scale' and 'bias'; block:NAME: every parameter of
    one block's layers (`models.base.blocks`) plus the head; layers:A..B: every parameter of
    the inclusive Keras-order range A..B plus the head. For these the active layers are the
    chosen layers plus the head, except for bias:N, whose BatchNorms outside the head (scale
    frozen) run in inference mode on their moving statistics, which stay unchanged: each is a
    fixed affine map (foldable into the neighbouring convolution) plus a trainable shift.
    bias_batchstats:N keeps them in training mode (batch statistics, moving ones updated), so the
    two differ only there; in both the chosen Dropout layers drop units, as in last:N. The head:
    the layers with base=False, or where a model has none (the small CNN) its last Dense layer.
  rules: custom rules, ('.*', 'frozen') appended unless the last regex is '.*'. Active: the
    layers with a trainable parameter, plus the weightless layers above the lowest of those
    (a BatchNorm whose scale or shift trains runs in training mode, as in Keras).
  `params` (a params tree) resolves rules exactly; without it (config checks) each layer is
  assumed to own NOMINAL_PARAMS of its kind. Raises ValueError for a bad or empty case.
  """
  layers = tuple(layers)
  if isinstance(case, (tuple, list)):
    return _rules_spec(case, layers, params)
  if isinstance(case, int) and not isinstance(case, bool):
    names = case_layers(layers, case, counting)
    return CaseSpec(f'last:{case}', 'last', tuple(case_rules(names)), names)
  family, sep, arg = case.partition(':') if isinstance(case, str) else ('', '', '')
  if not sep or family not in FAMILIES or not arg:
    raise ValueError(f'Unknown freeze case {case!r}: a case is {CASE_FORMS}.')
  if family == 'rules':
    return _rules_spec(_parse_rules(arg), layers, params)
  if family in _SUFFIX_FAMILIES:
    if not re.fullmatch('[0-9]+', arg):
      raise ValueError(f'Freeze case {case!r}: N must be an int >= 0; a case is {CASE_FORMS}.')
    n = int(arg)
    if family == 'last':
      return case_spec(n, layers, counting)
    chosen = [l.name for l in _suffix(layers, n, counting, f'Case {case!r}')]
    case = f'{family}:{n}'
  elif family == 'block':
    chosen = _block_layers(case, arg, layers)
  else:
    chosen = _range_layers(case, arg, layers)
    case = f'layers:{chosen[0]}..{chosen[-1]}'
  spec = _family_spec(case, family, layers, chosen)
  if params is not None and TRAINABLE not in _labels(param_paths(params), spec.rules).values():
    raise ValueError(f'Case {case!r} trains no parameter: the model has no parameter that its '
                     f'rules {spec.rules[:-1]} label {TRAINABLE!r}.')
  return spec


_PARAMS_OF = {'bias': 'bias', 'bias_batchstats': 'bias', 'norm': '(scale|bias)', 'block': '.*',
              'layers': '.*'}


def _family_spec(name, family, layers, chosen):
  """bias/bias_batchstats/norm/block/layers: the `chosen` layers' parameters of the family,
  plus the head's; active: the chosen layers and the head, less bias:N's BatchNorms."""
  head = set(head_layers(layers))
  chosen = set(chosen)
  rules = []
  for l in layers:
    if l.name in head:
      rules.append((re.escape(l.name) + '/.*', TRAINABLE))
    elif l.name in chosen and l.weighted and (family != 'norm' or l.kind == 'BatchNormalization'):
      rules.append((re.escape(l.name) + '/' + _PARAMS_OF[family], TRAINABLE))
  if not rules:
    raise ValueError(f'Case {name!r} trains no parameter: its layers ({", ".join(sorted(chosen))})'
                     f' have no {family.partition("_")[0]} parameters and the model has no head.')
  frozen_stats = family == 'bias'  # TinyTL-B: BatchNorms with a frozen scale keep moving stats
  active = tuple(l.name for l in layers if l.name in head or (
      l.name in chosen and not (frozen_stats and l.kind == 'BatchNormalization')))
  return CaseSpec(name, family, tuple(rules) + (('.*', FROZEN),), active)


def head_layers(layers):
  """The head trained with every bias/norm/block/layers case: the layers with base=False, or
  (a model without a separate head) the last Dense layer."""
  head = tuple(l.name for l in layers if not l.base)
  if head:
    return head
  dense = [l.name for l in layers if l.kind == 'Dense']
  return tuple(dense[-1:])


def _block_layers(case, arg, layers):
  known = layer_blocks(layers)
  if arg not in known:
    raise ValueError(f"Freeze case {case!r}: unknown block {arg!r}; the model's blocks are "
                     f'{", ".join(known) or "none"}.')
  return known[arg]


def _range_layers(case, arg, layers):
  """The layer names of 'layers:A..B' (names or 1-based indices, inclusive)."""
  names = [l.name for l in layers]
  ends = arg.split('..')
  if len(ends) != 2 or not all(ends):
    raise ValueError(f'Freeze case {case!r}: a range is layers:A..B; a case is {CASE_FORMS}.')

  def index(ref):
    if re.fullmatch('[0-9]+', ref):
      if not 1 <= int(ref) <= len(names):
        raise ValueError(f'Freeze case {case!r}: layer index {ref} is out of range 1..'
                         f'{len(names)}.')
      return int(ref) - 1
    if ref not in names:
      raise ValueError(f'Freeze case {case!r}: no layer named {ref!r}; give Keras layer names '
                       f'or 1-based indices 1..{len(names)}.')
    return names.index(ref)

  lo, hi = index(ends[0]), index(ends[1])
  if lo > hi:
    raise ValueError(f'Freeze case {case!r}: {ends[0]} (layer {lo + 1}) comes after {ends[1]} '
                     f'(layer {hi + 1}); write the lower layer first.')
  return tuple(names[lo:hi + 1])


def _parse_rules(arg):
  """'rules:RX;!RX' -> rules: ';'-separated regexes, '!' marks a frozen one."""
  return tuple((rx[1:], FROZEN) if rx.startswith('!') else (rx, TRAINABLE)
               for rx in arg.split(';'))


def _rules_spec(rules, layers, params):
  rules = _checked_rules(rules)
  if rules[-1][0] != '.*':
    rules += (('.*', FROZEN),)
  shown = rules[:-1] if rules[-1] == ('.*', FROZEN) else rules
  name = 'rules:' + ';'.join(rx if lab == TRAINABLE else '!' + rx for rx, lab in shown)
  paths = param_paths(params) if params is not None else nominal_paths(layers)
  labels = _labels(paths, rules)
  owners = {p.split('/')[0] for p, lab in labels.items() if lab == TRAINABLE}
  names = [l.name for l in layers]
  if not owners:
    raise ValueError(f'Case {name!r} trains no parameter: no rule labels a parameter '
                     f'{TRAINABLE!r}.')
  lowest = min(names.index(o) for o in owners)
  active = tuple(l.name for i, l in enumerate(layers)
                 if l.name in owners or (i > lowest and not l.weighted))
  return CaseSpec(name, 'rules', rules, active)


def _checked_rules(rules):
  """`rules` as a tuple of (regex, label) pairs, or a ValueError naming the bad one."""
  if not rules:
    raise ValueError(f'Freeze case {rules!r}: rules must not be empty; a case is {CASE_FORMS}.')
  out = []
  for r in rules:
    if (not isinstance(r, (tuple, list)) or len(r) != 2
        or not all(isinstance(x, str) for x in r)):
      raise ValueError(f'Freeze rule {r!r}: a rule is a (regex, label) pair of strings.')
    rx, label = r
    if label not in (TRAINABLE, FROZEN):
      raise ValueError(f'Freeze rule {r!r}: label {label!r} is not {TRAINABLE!r} or {FROZEN!r}.')
    try:
      re.compile(rx)
    except re.error as e:
      raise ValueError(f'Freeze rule {r!r}: {rx!r} is not a regex ({e}).') from None
    out.append((rx, label))
  return tuple(out)


def param_paths(params):
  """The 'layer/param' paths of a params tree."""
  return tuple(flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/'))


def nominal_paths(layers):
  """'layer/param' paths assumed from layer kinds (NOMINAL_PARAMS), without a params tree."""
  return tuple(f'{l.name}/{p}' for l in layers if l.weighted
               for p in NOMINAL_PARAMS.get(l.kind, ()))


def _labels(paths, rules):
  """{path: label}: the first rule whose regex fullmatches the path."""
  compiled = [(re.compile(rx), label) for rx, label in rules]
  return {p: next(label for pattern, label in compiled if pattern.fullmatch(p)) for p in paths}


def trainable_params_by_layer(labels):
  """{layer: names of its trainable params ('kernel', 'bias', ...)} from a label tree; layers
  with no trainable param are left out."""
  out = {}
  for path, label in flax.traverse_util.flatten_dict(flax.core.unfreeze(labels)).items():
    if label == TRAINABLE:
      out.setdefault(path[0], []).append('/'.join(path[1:]))
  return {k: tuple(v) for k, v in out.items()}


def case_slug(name):
  """`name` (a case, str()-ed) as a safe, unique file name part: unchanged when it is made of
  [A-Za-z0-9_.-] only (int cases: '9'), else the unsafe runs replaced by '-', cut to 40
  characters, plus 8 hex digits of its sha1 ('last:9' -> 'last-9-<sha1>')."""
  name = str(name)
  if re.fullmatch(r'[A-Za-z0-9_.-]+', name) and len(name) <= 64 and name not in ('.', '..'):
    return name
  safe = re.sub(r'[^A-Za-z0-9_.-]+', '-', name)[:40]
  return f'{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}'
