"""Case families (last, bias, bias_batchstats, norm, block, layers, rules): parsing, label
trees, active layers, train-step behaviour and XLA's compiled FLOPs against the analytic count."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from tljax.accounting import costs
from tljax.config import checks
from tljax import models
from tljax.runtime import backend
from tljax.sweep import layout
from tljax.sweep import runner
from tljax.training import case as case_lib
from tljax.training import compiled as compiled_lib
from tljax.training import freezing
from tljax.training import prefix_cache
from tljax.training.steps import TrainState, train_step

BATCH = 16
CLASSES = 5  # as tiny_config's digits 5-9: the end-to-end run reuses the initial variables
# Forward MACs per example (formula: H*W*9*Cin*Cout for a 3x3 SAME conv, in*out for dense).
CONV5, DENSE, DENSE_1 = 8 * 8 * 9 * 128 * 128, 2048 * 128, 128 * CLASSES
CONVS = ('conv2d', 'conv2d_1', 'conv2d_2', 'conv2d_3', 'conv2d_4', 'conv2d_5')
BNS = tuple(f'batch_normalization{s}' for s in ('', '_1', '_2', '_3', '_4', '_5', '_6'))
SMALL_CASES = ('last:9', 'bias:9', 'norm:9', 'block:block3')  # layers and rules: end to end


@pytest.fixture(scope='module')
def cnn():
  model = models.create('small_cnn', 10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
  return model.keras_layers(), params['params']


def _trainable(spec, params):
  labels = freezing.label_tree(params, spec.rules, log=False)
  return {f'{layer}/{p}' for layer, ps in freezing.trainable_params_by_layer(labels).items()
          for p in ps}


@pytest.mark.parametrize('case, name', [
    (9, 'last:9'), ('last:9', 'last:9'), ('bias:023', 'bias:23'), ('norm:4', 'norm:4'),
    ('bias_batchstats:09', 'bias_batchstats:9'),
    ('block:block2', 'block:block2'),
    ('layers:5..8', 'layers:max_pooling2d..batch_normalization_2'),
    ('layers:dense..dense', 'layers:dense..dense'),
    ((('dense_1/.*', 'trainable'),), 'rules:dense_1/.*'),
    ([('dense/kernel', 'trainable'), ('dense.*', 'frozen'), ('.*', 'frozen')],
     'rules:dense/kernel;!dense.*'),
    ('rules:dense/kernel;!dense.*', 'rules:dense/kernel;!dense.*'),
])
def test_canonical_names(cnn, case, name):
  spec = freezing.case_spec(case, cnn[0], params=cnn[1])
  assert spec.name == name and spec.family == name.split(':')[0]
  assert spec.rules[-1] == ('.*', 'frozen')


def test_an_int_case_is_exactly_the_old_case(cnn):
  layers, _ = cnn
  for n in (1, 4, 9, 23):
    spec = freezing.case_spec(n, layers)
    assert spec.active_layers == freezing.case_layers(layers, n)
    assert spec.rules == tuple(freezing.case_rules(freezing.case_layers(layers, n)))
    assert freezing.case_spec(f'last:{n}', layers) == spec


@pytest.mark.parametrize('case, message', [
    ('bias:x', r"Freeze case 'bias:x': N must be an int >= 0; a case is an int N or 'last:N'"),
    ('last:', r"Unknown freeze case 'last:': a case is"),
    ('layers:a', r"Freeze case 'layers:a': a range is layers:A..B"),
    ('frozen:3', r"Unknown freeze case 'frozen:3'"),
    (2.0, r'Unknown freeze case 2.0'),
    ('bias:24', r"Case 'bias:24' is out of range: the model has 23 layers"),
    ('norm:0', r"Case 'norm:0' is out of range"),
    ('block:block4', r"unknown block 'block4'; the model's blocks are block1, block2, block3, "
                     r'head'),
    ('layers:dense..conv2d', r'dense \(layer 20\) comes after conv2d \(layer 1\)'),
    ('layers:conv..dense', r"no layer named 'conv'; give Keras layer names or 1-based"),
    ('layers:0..3', r'layer index 0 is out of range 1..23'),
    ((('[', 'trainable'),), r"'\[' is not a regex"),
    ((('dense/.*', 'train'),), r"label 'train' is not 'trainable' or 'frozen'"),
    ((('dense/.*',),), r'a rule is a \(regex, label\) pair'),
    ((), r'rules must not be empty'),
    ((('dense/kernel', 'frozen'),), r"Case 'rules:!dense/kernel' trains no parameter"),
    ((('nothing/.*', 'trainable'),), r"Case 'rules:nothing/.\*' trains no parameter"),
])
def test_bad_cases_name_the_case_and_what_is_accepted(cnn, case, message):
  with pytest.raises(ValueError, match=message):
    freezing.case_spec(case, cnn[0], params=cnn[1])


def test_bias_trains_every_bias_and_bn_shift_plus_the_classifier(cnn):
  spec = freezing.case_spec('bias:23', cnn[0], params=cnn[1])
  expected = {f'{l}/bias' for l in CONVS + BNS + ('dense', 'dense_1')} | {'dense_1/kernel'}
  assert _trainable(spec, cnn[1]) == expected
  # TinyTL-B: every BatchNorm on its moving statistics (only the head, dense_1, has a scale).
  assert spec.active_layers == tuple(l.name for l in cnn[0] if l.name not in BNS)
  other = freezing.case_spec('bias_batchstats:23', cnn[0], params=cnn[1])
  assert _trainable(other, cnn[1]) == expected
  assert other.active_layers == tuple(l.name for l in cnn[0])  # every BN in training mode


def test_label_trees_and_active_layers_per_family(cnn):
  layers, params = cnn
  head = {'dense_1/kernel', 'dense_1/bias'}
  spec = lambda c: freezing.case_spec(c, layers, params=params)
  assert _trainable(spec('bias:9'), params) == head | {
      'conv2d_5/bias', 'batch_normalization_5/bias', 'dense/bias', 'batch_normalization_6/bias'}
  assert _trainable(spec('norm:9'), params) == head | {
      f'{bn}/{p}' for bn in BNS[5:] for p in ('scale', 'bias')}
  last9 = ('conv2d_5', 'batch_normalization_5', 'max_pooling2d_2', 'dropout_2', 'flatten',
           'dense', 'batch_normalization_6', 'dropout_3', 'dense_1')
  assert spec('bias_batchstats:9').active_layers == spec('norm:9').active_layers == last9
  assert spec('bias:9').active_layers == tuple(l for l in last9 if l not in BNS)
  block3 = ('conv2d_4', 'batch_normalization_4', 'conv2d_5', 'batch_normalization_5',
            'max_pooling2d_2', 'dropout_2')
  assert spec('block:block3').active_layers == block3 + ('dense_1',)
  assert _trainable(spec('block:block3'), params) == head | {
      f'{l}/{p}' for l in ('conv2d_4', 'conv2d_5') for p in ('kernel', 'bias')} | {
      f'{bn}/{p}' for bn in BNS[4:6] for p in ('scale', 'bias')}
  rng = spec('layers:batch_normalization_5..dense')
  assert rng.active_layers == last9[1:6] + ('dense_1',)  # BN 6 and dropout_3 stay frozen
  assert _trainable(rng, params) == head | {'dense/kernel', 'dense/bias',
                                            'batch_normalization_5/scale',
                                            'batch_normalization_5/bias'}


def test_rules_activate_trained_layers_and_the_weightless_ones_above(cnn):
  layers, params = cnn
  rules = (('batch_normalization_5/scale', 'trainable'), ('dense_1/kernel', 'trainable'))
  spec = freezing.case_spec(rules, layers, params=params)
  assert spec.name == 'rules:batch_normalization_5/scale;dense_1/kernel'
  assert spec.active_layers == ('batch_normalization_5', 'max_pooling2d_2', 'dropout_2',
                                'flatten', 'dropout_3', 'dense_1')  # dense and BN 6 stay frozen
  assert _trainable(spec, params) == {'batch_normalization_5/scale', 'dense_1/kernel'}
  labels = freezing.label_tree(params, spec.rules, log=False)
  assert freezing.trainable_params_by_layer(labels) == {'batch_normalization_5': ('scale',),
                                                        'dense_1': ('kernel',)}


def test_the_prefix_cache_cuts_below_the_lowest_active_layer(cnn):
  """A BatchNorm in training mode or a trainable bias is never cached; a frozen conv at the
  bottom of a norm case is."""
  layers, params = cnn
  model = models.create('small_cnn', 10)
  names = [l.name for l in layers]

  def cut(case):
    spec = freezing.case_spec(case, layers, params=params)
    labels = freezing.label_tree(params, spec.rules, log=False)
    k = prefix_cache.cut_index(model, spec.active_layers,
                               freezing.trainable_params_by_layer(labels))
    return names[k]

  assert cut('bias:9') == cut('last:9') == 'conv2d_5'  # conv2d_5's bias trains
  # BN 0's shift trains in inference mode: not active, but never cached.
  assert cut('bias:22') == cut('bias_batchstats:22') == 'batch_normalization'
  assert cut('norm:9') == 'batch_normalization_5'  # conv2d_5 is frozen: its output is cached
  assert cut('block:block3') == 'conv2d_4'
  assert cut('layers:max_pooling2d_2..dense') == 'dropout_2'  # a Dropout in training mode
  assert cut((('batch_normalization_5/scale', 'trainable'),)) == 'batch_normalization_5'
  assert cut((('dense_1/kernel', 'trainable'),)) == 'dense_1'  # dropout_3 stays frozen


def test_efficientnet_blocks_and_bias_norm_cases():
  model = models.create('efficientnet_b0', num_classes=7)
  blocks = model.blocks()
  assert list(blocks)[:3] == ['stem', 'block1a', 'block2a'] and list(blocks)[-2:] == ['top', 'head']
  assert blocks['stem'] == ('rescaling', 'normalization', 'rescaling_1', 'stem_conv_pad',
                            'stem_conv', 'stem_bn', 'stem_activation')
  assert blocks['top'] == ('top_conv', 'top_bn', 'top_activation')
  assert sum(map(len, blocks.values())) == len(model.keras_layers())
  assert 'head' not in models.create('efficientnet_b0').blocks()
  layers = model.keras_layers()
  spec = freezing.case_spec('block:block7a', layers, 'base')
  assert spec.active_layers == blocks['block7a'] + blocks['head']
  head = {f'{l}/{p}' for l, ps in (('dense', ('kernel', 'bias')), ('dense_1', ('kernel', 'bias')),
                                   ('batch_normalization', ('scale', 'bias'))) for p in ps}
  params = _b0_params()['params']
  bias = {f'block7a_{l}/bias' for l in ('expand_bn', 'bn', 'se_reduce', 'se_expand', 'project_bn')}
  assert _trainable(freezing.case_spec('bias:16', layers, 'base'), params) == (
      head | bias | {'top_bn/bias'})
  assert _trainable(freezing.case_spec('norm:16', layers, 'base'), params) == head | {
      f'{l}/{p}' for l in ('block7a_expand_bn', 'block7a_bn', 'block7a_project_bn', 'top_bn')
      for p in ('scale', 'bias')}


@functools.lru_cache(maxsize=None)
def _b0_params():
  model = models.create('efficientnet_b0', num_classes=7, depthwise_impl='slices')
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


def _compile_train(model, tx, trainable, state, config, images):
  """The train step as compiled.compile_steps compiles it (on `images`' shape)."""
  jit = jax.jit(functools.partial(train_step, model=model, tx=tx, trainable=trainable),
                donate_argnums=0)
  return backend.compile(jit.lower(state, images, jax.ShapeDtypeStruct(
      (images.shape[0],), jnp.int32)), config)


@pytest.fixture(scope='module')
def small_steps():
  """Each small-CNN family case made by case_lib.make_case and its train step compiled."""
  config = default.get_config()
  config.batch_size = BATCH
  out = {}
  for name in SMALL_CASES:
    case = case_lib.make_case(config, name, num_classes=CLASSES)
    compiled = _compile_train(case.model, case.tx, case.trainable, case.state, config,
                              compiled_lib.input_spec(config, BATCH))
    per_layer = costs.layer_macs(case.model, case.variables, (32, 32, 1))
    out[name] = dict(case=case, step=compiled, flops=costs.xla_costs(compiled)['flops'],
                     analytic=costs.analytic_train_macs(
                         per_layer, freezing.trainable_params_by_layer(case.labels)))
  return out


def test_analytic_counts_per_family_by_hand(small_steps):
  a = {n: small_steps[n]['analytic'] for n in SMALL_CASES}
  assert a['last:9']['weight_grad'] == CONV5 + DENSE + DENSE_1
  assert a['bias:9']['weight_grad'] == a['norm:9']['weight_grad'] == DENSE_1  # kernels frozen
  # ... but the backward pass still reaches conv2d_5's bias (bias) or BN 5 (norm).
  assert a['bias:9']['input_grad'] == a['last:9']['input_grad'] == DENSE + DENSE_1
  assert a['norm:9']['input_grad'] == DENSE + DENSE_1
  assert a['block:block3']['weight_grad'] == 8 * 8 * 9 * 64 * 128 + CONV5 + DENSE_1
  assert a['block:block3']['input_grad'] == CONV5 + DENSE + DENSE_1  # through the frozen dense
  assert a['bias:9']['trainable_forward'] == DENSE_1


def test_xla_count_agrees_with_the_analytic_count_per_family(small_steps):
  for name, s in small_steps.items():
    ratio = s['flops'] / BATCH / (2 * s['analytic']['total'])
    # As tests/test_accounting.py: XLA omits SAME-padding taps and adds elementwise work.
    assert 0.85 < ratio < 1.05, (name, ratio)


def test_bias_saves_exactly_the_frozen_kernels_weight_gradients(small_steps):
  """last:9 - bias:9 = the weight gradients of conv2d_5 and dense (2 FLOPs per MAC, per example).
  XLA counts conv2d_5's 3x3 SAME taps on its 8x8 map without padding: (22/24)^2 of them; the
  Adam update of those kernels (~410k parameters, per step) adds about 2 % at batch 16."""
  saved = small_steps['last:9']['flops'] - small_steps['bias:9']['flops']
  textbook = 2 * BATCH * (CONV5 + DENSE)
  assert 0.8 < saved / textbook < 0.95, saved / textbook
  unpadded = 2 * BATCH * (CONV5 * (22 / 24) ** 2 + DENSE)
  assert 1.0 < saved / unpadded < 1.04, saved / unpadded
  assert abs(small_steps['norm:9']['flops'] - small_steps['bias:9']['flops']) < 0.01 * saved


def test_a_norm_step_moves_its_batchnorms_and_nothing_frozen(small_steps):
  s = small_steps['norm:9']
  state = s['case'].state
  before = jax.tree.map(np.array, (state.params, state.batch_stats))  # copies: state is donated
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((BATCH, 32, 32, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
  state, _ = s['step'](state, images, labels)
  params, stats = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  for bn in BNS:
    moved = not np.array_equal(stats[bn]['mean'], before[1][bn]['mean'])
    assert moved == (bn in BNS[5:]), bn  # training mode: batch statistics, moving averages move
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  old = flax.traverse_util.flatten_dict(before[0], sep='/')
  changed = {p for p in flat if not np.array_equal(flat[p], old[p])}
  assert changed == {'batch_normalization_5/scale', 'batch_normalization_5/bias',
                     'batch_normalization_6/scale', 'batch_normalization_6/bias',
                     'dense_1/kernel', 'dense_1/bias'}


@pytest.fixture(scope='module')
def b0():
  """B0 at 32x32 (7 classes, slices depthwise): model, variables (shapes), per-layer MACs."""
  model = models.create('efficientnet_b0', num_classes=7, depthwise_impl='slices')
  variables = _b0_params()
  return model, variables, costs.layer_macs(model, variables, (32, 32, 3))


@pytest.mark.parametrize('name', ['bias:16', 'norm:16'])
def test_efficientnet_bias_and_norm_suffix_flops_match_the_analytic_count(b0, name):
  """B0 at 32x32, head + last 16 base layers (block 7a, top): the prefix cache cuts below the
  first BatchNorm in training mode (the frozen expand conv joins the prefix), and the compiled
  suffix train step (what trains on cached features) costs what the analytic count says: no
  weight gradient for the frozen kernels (dwconv, SE, project, top_conv), input gradients down
  to block7a_expand_bn."""
  model, variables, per_layer = b0
  layers = model.keras_layers()
  spec = freezing.case_spec(name, layers, 'base', params=variables['params'])
  labels = freezing.label_tree(variables['params'], spec.rules, log=False)
  trainable_params = freezing.trainable_params_by_layer(labels)
  model = model.clone(frozen=frozenset(l.name for l in layers) - set(spec.active_layers))
  cut = prefix_cache.cut_index(model, spec.active_layers, trainable_params)
  assert layers[cut].name == 'block7a_expand_bn'
  tx = freezing.make_optimizer(optax.adam(1e-3), labels)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=variables['params'],
                     batch_stats=variables['batch_stats'],
                     opt_state=jax.eval_shape(tx.init, variables['params']),
                     rng=jax.eval_shape(lambda: jax.random.key(0)))
  batch = 32
  features = jax.ShapeDtypeStruct((batch, 1, 1, 1152), jnp.float32)  # expand conv's output
  trainable = jax.tree.map(lambda l: l == freezing.TRAINABLE, labels)
  compiled = _compile_train(prefix_cache.Suffix(model, cut), tx, trainable, state,
                            default.get_config(), features)
  analytic = costs.analytic_train_macs(per_layer[cut:], trainable_params)
  assert analytic['weight_grad'] == 1280 * 128 + 128 * 7  # the head's dense layers only
  # dwconv (3x3 on 1x1x1152), SE reduce/expand, project, top_conv, dense, dense_1:
  assert analytic['input_grad'] == (9 * 1152 + 2 * 1152 * 48 + 1152 * 320 + 320 * 1280
                                    + 1280 * 128 + 128 * 7)
  ratio = costs.xla_costs(compiled)['flops'] / batch / (2 * analytic['total'])
  # XLA adds the elementwise work on 1x1 maps (BatchNorm in training mode, swish, SE gating)
  # and Adam: ~8 %. Counting the frozen kernels' weight gradients would give ~0.77.
  assert 0.97 < ratio < 1.12, ratio


def test_checks_accept_every_family_and_catch_duplicates(cnn):
  config = default.get_config()
  config.cases = (9, 'bias:23', 'bias_batchstats:23', 'norm:9', 'block:block3', 'layers:1..4',
                  (('dense_1/.*', 'trainable'),))
  checks.validate(config)
  checks.validate_cases(config, cnn[0])
  config.cases = (4, 9, 'last:9')
  with pytest.raises(ValueError, match=r"cases 9 and 'last:9' are the same case 'last:9'"):
    checks.validate_cases(config, cnn[0])
  config.cases = (4, 'bias:x')
  with pytest.raises(ValueError, match=r"config.cases=\(4, 'bias:x'\) with config.case_counting="
                                       r"'model' and config.model='small_cnn': Freeze case"):
    checks.validate_cases(config, cnn[0])


def test_case_folders_are_safe_and_distinct(tmp_path):
  assert layout.case_dir('w', case_lib.run_key('last:9', 2)) == 'w/checkpoints/last-9-' + (
      freezing.case_slug('last:9')[-8:] + '_seed2')
  names = ['layers:a..b', 'layers:a.b', 'rules:dense_1/.*', 'rules:dense_1/.+', 'last:9',
           "(('dense_1/.*', 'trainable'),)", 'rules:' + 'x' * 300]
  slugs = [freezing.case_slug(n) for n in names]
  assert len(set(slugs)) == len(slugs)
  for slug in slugs:
    assert set(slug) <= set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-')
    assert len(slug) <= 64
    (tmp_path / f'case_{slug}').mkdir()
  assert freezing.case_slug('last:9').startswith('last-9-')


def test_layers_and_rules_cases_run_end_to_end_and_resume(tiny_config, tmp_path):
  """train_and_evaluate with a range and a rules case: canonical names in the records, safe
  folders, exact accounting; a rerun keeps both records and their metrics lines (a rules
  case's key reads back from JSON as lists). Without the prefix cache: two compilations fewer."""
  rules = (('batch_normalization_5/scale', 'trainable'), ('dense_1/kernel', 'trainable'))
  tiny_config.pretrained = 'none'
  tiny_config.prefix_cache = False
  tiny_config.cases = ('layers:batch_normalization_5..dense', rules)
  work = tmp_path / 'w'
  summary = runner.train_and_evaluate(tiny_config, str(work))
  cases = summary['cases']
  assert [c['case'] for c in cases] == ['layers:batch_normalization_5..dense',
                                        'rules:batch_normalization_5/scale;dense_1/kernel']
  for c in cases:
    assert c['status'] == 'ok' and c['steps'] == 3
    assert 0.85 < c['xla_to_analytic_train_flops'] < 1.05, c['xla_to_analytic_train_flops']
  macs = [c['analytic_macs_per_example'] for c in cases]
  assert (macs[0]['weight_grad'], macs[0]['input_grad']) == (DENSE + DENSE_1, DENSE + DENSE_1)
  assert (macs[1]['weight_grad'], macs[1]['input_grad']) == (DENSE_1, DENSE + DENSE_1)
  assert cases[1]['trainable_params'] == 128 + DENSE_1  # BN 5's scale, dense_1's kernel
  assert sorted(p.name for p in (work / 'cases').iterdir()) == sorted(
      f'{case_lib.run_key(c["case"], 0)}.json' for c in cases)
  lines = (work / 'metrics.jsonl').read_text()
  again = runner.train_and_evaluate(tiny_config, str(work))
  assert [c['case'] for c in again['cases']] == [c['case'] for c in cases]
  assert (work / 'metrics.jsonl').read_text() == lines
