"""The edge models in tljax's machinery: prefix-cache cuts, the device memory model's rules for
their layer kinds, and dry runs (prefix cache, counted depthwise FLOPs, resume) on shrunk inputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mobilenet
from tljax.accounting import device_memory
from tljax import models
from tljax.sweep import runner
from tests.conftest import XLA_CACHE

EDGE = [('mobilenet_v2', {'alpha': 0.35}), ('mobilenet_v3_small', {}),
        ('mobilenet_v3_large', {'minimalistic': True}), ('resnet50', {})]


def _random_variables(model, x):
  """Numpy random variables (no XLA init): BatchNorm variances positive, kernels ~1/sqrt(fan)."""
  shapes = jax.eval_shape(model.init, jax.random.key(1), x)
  rng = np.random.default_rng(0)

  def fill(path, s):
    if 'var' in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    scale = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return (rng.normal(size=s.shape) * scale).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize('name, fields', EDGE, ids=[n for n, _ in EDGE])
def test_prefix_then_suffix_is_the_whole_model_at_block_boundaries(name, fields):
  model = models.create(name, num_classes=4, **fields)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x)
  full = model.apply(variables, x)  # eagerly: compiling each split would take far longer
  layers = model.keras_layers()
  starts = [names[0] for names in model.blocks().values()]
  for cut in starts[1::max(1, len(starts) // 4)] + ['dense']:
    k = [l.name for l in layers].index(cut)
    assert k in model.cut_points()
    out = model.apply(variables, model.apply(variables, x, stop=k), start=k)
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
  # Inside a residual block or a squeeze-excite branch two tensors cross: no cut there.
  inside = [i for i, l in enumerate(layers) if l.kind in ('Add', 'Multiply')]
  assert inside and not set(inside) & set(model.cut_points())
  with pytest.raises(ValueError, match='more than one tensor crosses there'):
    model.apply(variables, x, stop=inside[0])


def _rows(model, variables, trainable, active, shape):
  out = device_memory.device_train_memory(model, variables, trainable, active, shape)
  return {r['name']: r for r in out['layers']}


def test_device_memory_of_relu6_hard_swish_and_squeeze_excite():
  model = models.create('mobilenet_v3_small', num_classes=4)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  layers = {l.name: l for l in model.keras_layers()}
  trainable = {'conv': ('kernel',), 'expanded_conv_squeeze_excite_conv': ('kernel', 'bias')}
  rows = _rows(model, variables, trainable, [], (64, 64, 3))
  # The stem: conv (32x32x16) keeps its 64x64x3 input, hard-swish its input.
  assert rows['conv']['kept_bytes'] == 4 * 64 * 64 * 3
  assert layers['activation'].activation == 'hard_swish'
  assert rows['activation']['kept_bytes'] == 4 * 32 * 32 * 16
  # ReLU: a 1-bit mask; the hard sigmoid on the excitation (16 values): a 1-bit mask too.
  assert rows['re_lu']['kept_bytes'] == 16 * 16 * 16 // 8
  assert layers['re_lu_1'].activation == 'hard_sigmoid' and rows['re_lu_1']['kept_bytes'] == 2
  # Squeeze-excite: its trainable reduce conv keeps the pooled vector, the excite both inputs.
  assert rows['expanded_conv_squeeze_excite_conv']['kept_bytes'] == 4 * 16
  assert rows['expanded_conv_squeeze_excite_mul']['kept_bytes'] == 4 * (16 * 16 * 16 + 16)
  assert rows['expanded_conv_squeeze_excite_avg_pool']['kept_bytes'] == 0
  mbv2 = models.create('mobilenet_v2', num_classes=4, alpha=0.35)
  v2 = jax.eval_shape(mbv2.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  rows = _rows(mbv2, v2, {'Conv1': ('kernel',)}, [], (32, 32, 3))
  assert rows['Conv1_relu']['why'] == 'relu6 1-bit mask'
  assert rows['Conv1_relu']['kept_bytes'] == 16 * 16 * 16 // 8
  assert rows['block_2_add']['kept_bytes'] == 0


def test_device_memory_of_resnets_shortcut_reads_the_block_input():
  model = models.create('resnet50', num_classes=4)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  train = ('kernel', 'bias')
  names = ('conv3_block1_0_conv', 'conv3_block1_3_conv')
  rows = _rows(model, variables, {n: train for n in names}, [], (64, 64, 3))
  # The shortcut convolution keeps the block's input (conv2_block3_out: 16x16x256), the main
  # path's last convolution its own input (conv3_block1_2_relu: 8x8x128), not the previous layer.
  assert rows['conv3_block1_0_conv']['kept_bytes'] == 4 * 16 * 16 * 256
  assert rows['conv3_block1_3_conv']['kept_bytes'] == 4 * 8 * 8 * 128
  assert rows['conv3_block1_out']['kept_bytes'] == 8 * 8 * 512 // 8


def _dry_config(tmp_path, model, **fields):
  c = mobilenet.get_config()
  c.update(dict(model=model, image_size=32, alpha=1.0, dry_run=True, progress=False,
                cache_dir=str(tmp_path / 'cache'), compilation_cache_dir=XLA_CACHE,
                device_xla_check=False, batch_size=8, eval_batch_size=16, seeds=(0,)))
  c.update(fields)
  return c


@pytest.mark.parametrize('model, fields, cases', [
    ('mobilenet_v3_small', dict(depthwise_impl='grouped'), ('block:expanded_conv_10',)),
    ('resnet50', {}, ('last:10',)),
    ('mobilenet_v3_large', dict(minimalistic=True, alpha=0.75, pretrained='none'), ('norm:20',)),
])
def test_dry_runs_cache_the_prefix_count_depthwise_as_slices_and_resume(tmp_path, model,
                                                                          fields, cases):
  # The cached path, which the cost model would never take for a dry run's few steps.
  c = _dry_config(tmp_path, model, cases=cases, prefix_cache_always=True, **fields)
  c.target_data_dir = _tiny_folder(tmp_path / 'target')
  summary = runner.train_and_evaluate(c, str(tmp_path / 'w'))
  run = summary['runs'][0]
  assert run['status'] == 'ok' and run['prefix_cache'] and run['train_flops_per_example'] > 0
  assert run['analytic_train_flops_per_example'] > 0
  if models.has_depthwise(model) and fields.get('depthwise_impl') == 'grouped':
    assert (run['depthwise_impl'], run['depthwise_impl_counted']) == ('grouped', 'slices')
    assert run['train_memory']['flops_as_compiled'] > run['train_flops_per_step']
  kinds = {r['kind'] for r in run['device_memory']['layers']}
  assert kinds >= {'Conv2D', 'BatchNormalization', 'Add'}
  # A rerun of the same config finds the finished run: nothing trains again.
  again = runner.train_and_evaluate(c, str(tmp_path / 'w'))
  assert again['runs'][0]['test_accuracy'] == run['test_accuracy']
  assert again['runs'][0]['wall_s'] == run['wall_s']
  saved = json.loads((tmp_path / 'w' / 'config.json').read_text())
  assert saved['model'] == model and saved['alpha'] == c.alpha


def _tiny_folder(root):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split in ('train', 'test'):
    for name in ('a', 'b', 'c'):
      (root / split / name).mkdir(parents=True)
      Image.new('RGB', (8, 8)).save(root / split / name / '0.png')
  return str(root)


DP_SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
assert jax.device_count() == 4, jax.devices()
from configs import mobilenet
from tljax.sweep import runner
out = {}
for dp in (False, True):
  c = mobilenet.get_config()
  c.update(dict(pretrained='none', target_dataset='digits', target_classes=(0, 1, 2),
                image_size=32, cases=('last:11',), seeds=(0,), epochs=1, steps_per_epoch=3,
                batch_size=16, eval_batch_size=64, log_every_steps=1, progress=False,
                learning_rate=1e-4, data_parallel=dp, device_xla_check=False,
                cache_dir=sys.argv[2] + '/cache'))
  workdir = sys.argv[2] + ('/dp' if dp else '/single')
  s = runner.train_and_evaluate(c, workdir)
  losses = [json.loads(l)['train_loss'] for l in open(workdir + '/metrics.jsonl')]
  out[str(dp)] = dict(losses=losses, run=s['runs'][0])
print('RESULT' + json.dumps(out))
'''


@pytest.mark.slow
def test_data_parallel_mobilenet_matches_single_device(tmp_path):
  import os, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             TF_CPP_MIN_LOG_LEVEL='2')
  r = subprocess.run([sys.executable, '-c', DP_SCRIPT, root, str(tmp_path)], env=env,
                     capture_output=True, text=True, timeout=1500)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.split('RESULT')[1])
  single, dp = out['False'], out['True']
  assert len(single['losses']) == len(dp['losses']) == 3
  assert abs(single['losses'][0] - dp['losses'][0]) <= 1e-5 * single['losses'][0]
  for a, b in zip(single['losses'], dp['losses']):
    assert abs(a - b) <= 2e-3 * abs(a), (a, b)
  assert dp['run']['train_memory']['devices'] == 4
  # Per example the 4 device programs do the single one's work, plus 3 more copies of the
  # replicated Adam update: at 32x32 MobileNetV2 0.35 computes so little per example (a few MFLOP
  # in this case) that those copies add ~25 % (measured 1.247).
  ratio = dp['run']['train_flops_per_example'] / single['run']['train_flops_per_example']
  assert 1.0 < ratio < 1.3
