"""bias:N (TinyTL-B: every BatchNorm's statistics frozen) against bias_batchstats:N (its
BatchNorms on batch statistics): the compiled train step of each, and one real step."""

import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from tljax.training import case as case_lib
from tljax.training import compiled as compiled_lib
from tljax.training import freezing

# No dimension of the small CNN has a factor 3 (1, 32, 64, 128 channels; 32..2 pixels; 5
# classes), so a reduction over a multiple of 3 elements is a reduction over the batch, even
# where XLA collapses dimensions.
BATCH = 3
CLASSES = 5
CASES = ('bias:23', 'bias_batchstats:23')
BNS = tuple(f'batch_normalization{s}' for s in ('', '_1', '_2', '_3', '_4', '_5', '_6'))
_HEADER = re.compile(r'^(?:ENTRY\s+)?%([\w.\-]+)\s*\(.*\{\s*$')
_INSTR = re.compile(r'^\s+(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$')


def _computations(text):
  """The computations of an HLO module's text: ({name: [(instruction, type, opcode, operand
  names, raw arguments, attributes)]}, the entry computation's name)."""
  comps, entry, cur = {}, None, None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header:
      cur = comps.setdefault(header.group(1), [])
      entry = header.group(1) if line.startswith('ENTRY') else entry
      continue
    m = _INSTR.match(line)
    if m and cur is not None:
      name, typ, op, rest = m.groups()
      depth, i = 1, 0
      while depth:
        depth += {'(': 1, ')': -1}.get(rest[i], 0)
        i += 1
      args = rest[:i - 1]
      cur.append((name, typ, op, re.findall(r'%([\w.\-]+)', args), args, rest[i:]))
  return comps, entry


def _dims(typ):
  return [int(d) for d in re.search(r'\[([\d,]*)\]', typ).group(1).split(',') if d]


def label_free_batch_reductions(hlo_text, batch):
  """The reductions over the batch (a multiple of `batch` elements) of tensors that do not
  depend on the labels (the entry's s32[batch] parameter), in a compiled step's HLO text.
  A bias gradient reduces the output gradient, which depends on the labels; a BatchNorm on
  batch statistics reduces the forward activations, which do not."""
  comps, entry = _computations(hlo_text)
  found, seen = [], set()

  def visit(comp, tainted_params):
    if (comp, tainted_params) in seen:
      return
    seen.add((comp, tainted_params))
    types, tainted = {}, set()
    for name, typ, op, operands, args, attrs in comps[comp]:
      types[name] = typ
      if op == 'parameter':
        labels = comp == entry and typ.startswith(f's32[{batch}]')
        if labels or int(args) in tainted_params:
          tainted.add(name)
        continue
      if any(o in tainted for o in operands):
        tainted.add(name)
      callee = re.search(r'(?:calls|to_apply|body)=%([\w.\-]+)', attrs)
      if callee and op in ('fusion', 'call'):
        visit(callee.group(1), frozenset(i for i, o in enumerate(operands) if o in tainted))
      elif callee and op == 'while':
        visit(callee.group(1), frozenset({0}) if name in tainted else frozenset())
      if op == 'reduce' and name not in tainted:
        reduced = re.search(r'dimensions=\{([\d,]*)\}', attrs).group(1)
        shape = _dims(types[operands[0]])
        if math.prod(shape[int(d)] for d in reduced.split(',') if d) % batch == 0:
          found.append(f'{comp}/{name}')

  visit(entry, frozenset())
  return found


@pytest.fixture(scope='module')
def steps():
  """Each case made as the sweep makes it and its train step compiled as the sweep compiles
  it (compiled.compile_steps, at batch BATCH)."""
  config = default.get_config()
  config.batch_size = BATCH
  out = {}
  for name in CASES:
    case = case_lib.make_case(config, name, num_classes=CLASSES)
    out[name] = case, compiled_lib.compile_steps(case.model, case.tx, case.trainable,
                                                 case.state, config, BATCH).train
  return out


def test_frozen_statistics_leave_no_batchnorm_reduction_in_the_compiled_step(steps):
  text = {name: step.as_text() for name, (_, step) in steps.items()}
  assert label_free_batch_reductions(text['bias:23'], BATCH) == []
  # The other mode: each BatchNorm's batch mean and mean square (the detector's control).
  assert len(label_free_batch_reductions(text['bias_batchstats:23'], BATCH)) >= 2 * len(BNS)


def _one_step(case, step):
  before = jax.tree.map(np.array, (case.state.params, case.state.batch_stats))  # donated
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((BATCH, 32, 32, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
  state, _ = step(case.state, images, labels)
  case.state = None
  after = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  flat = lambda t: flax.traverse_util.flatten_dict(t, sep='/')
  return (flat(before[0]), flat(after[0])), (flat(before[1]), flat(after[1]))


def test_one_step_of_each_mode(steps):
  """bias:23: the biases move, every frozen parameter and every moving statistic stays bit for
  bit; bias_batchstats:23: the same parameters move, and every BatchNorm's statistics."""
  trains = {f'{l}/bias' for l in BNS + ('conv2d', 'conv2d_1', 'conv2d_2', 'conv2d_3',
                                        'conv2d_4', 'conv2d_5', 'dense', 'dense_1')}
  trains.add('dense_1/kernel')
  for name, (case, step) in steps.items():
    (old, new), (old_stats, new_stats) = _one_step(case, step)
    changed = {p for p in new if not np.array_equal(new[p], old[p])}
    assert changed == trains, name
    moved = {p for p in new_stats if not np.array_equal(new_stats[p], old_stats[p])}
    assert moved == (set() if name == 'bias:23' else set(new_stats)), name


def test_the_modes_differ_only_in_their_batchnorms():
  layers = compiled_lib.model_for(default.get_config(), CLASSES).keras_layers()
  frozen_stats, batch_stats = (freezing.case_spec(c, layers) for c in CASES)
  assert frozen_stats.rules == batch_stats.rules
  assert batch_stats.active_layers == tuple(l.name for l in layers)  # the old bias:23
  assert frozen_stats.active_layers == tuple(l.name for l in layers if l.name not in BNS)
  assert (batch_stats.name, batch_stats.family) == ('bias_batchstats:23', 'bias_batchstats')


def test_the_record_counts_a_frozen_statistics_batchnorm_whose_shift_trains():
  """bias:23 chooses the same 23 layers as bias_batchstats:23; only which run in training mode
  differs (the record's active_layers)."""
  from tljax.training import record  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  out = {}
  for name in ('bias:23', 'bias_batchstats:23'):
    case = case_lib.make_case(config, name, num_classes=5)
    out[name] = record._what_trains(case)  # pylint: disable=protected-access
  frozen, batch = out['bias:23'], out['bias_batchstats:23']
  assert frozen['trainable_layers'] == batch['trainable_layers'] == 23
  assert frozen['trainable_layer_names'] == batch['trainable_layer_names']
  assert frozen['first_trainable_layer'] == batch['first_trainable_layer']
  assert batch['active_layers'] == 23
  assert frozen['active_layers'] == 23 - sum('batch_normalization' in n
                                             for n in batch['active_layer_names'])
