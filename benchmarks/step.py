"""Train-step speed per freeze case: tljax against PyTorch and Keras-TensorFlow on the same CPU."""

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# The six small-CNN cases (Figure 3.1) and the EfficientNet cases of the benchmark.
SMALL_CASES = (1, 4, 9, 11, 17, 23)
B0_TOP = 3  # top_conv, top_bn, top_activation
PEERS = ('torch', 'keras_tf')
PEER_MODULES = {'torch': ('torch',), 'keras_tf': ('keras', 'tensorflow')}
# Ratio of (step time fraction) to (FLOP fraction) the frozen cases should stay within.
TRACKING_TARGET = 1.3

# Timed steps: `number` steps per timing, `repeat` timings, after `warmup` steps.
TIMING = {
    'full': {'small_cnn': dict(number=10, repeat=5, warmup=3),
             'efficientnet_b0': dict(number=2, repeat=5, warmup=1),
             'grouped': dict(number=1, repeat=3, warmup=1),
             'input': dict(number=20, repeat=5, warmup=2)},
    'quick': {'small_cnn': dict(number=5, repeat=3, warmup=2),
              'efficientnet_b0': dict(number=1, repeat=3, warmup=1),
              'grouped': dict(number=1, repeat=2, warmup=1),
              'input': dict(number=10, repeat=3, warmup=1)},
}


def median_time(step, *, number, repeat, warmup=1, sync=lambda out: out):
  """Seconds per call of `step()`: median over `repeat` timings of `number` calls.

  `sync(out)` waits for the last call's result (block_until_ready for JAX); it is
  the only host synchronisation, once per timing. Returns (median, samples).
  """
  if number < 1 or repeat < 1:
    raise ValueError(f'number and repeat must be >= 1, got {number}, {repeat}.')
  out = None
  for _ in range(warmup):
    out = step()
  sync(out)
  samples = []
  for _ in range(repeat):
    t0 = time.perf_counter()
    for _ in range(number):
      out = step()
    sync(out)
    samples.append((time.perf_counter() - t0) / number)
  return statistics.median(samples), samples


def cpu_model():
  """The CPU's model name (as lscpu shows it) and the core count."""
  name = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          name = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return {'cpu': name, 'cores': os.cpu_count(), 'platform': platform.platform()}


def _cpu_seconds():
  """(busy CPU s of the whole machine, steal s, CPU s of this process and its waited children)."""
  own = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF,
            resource.RUSAGE_CHILDREN) for f in ('ru_utime', 'ru_stime'))
  try:
    with open('/proc/stat') as f:
      t = [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None, None, own
  hz = os.sysconf('SC_CLK_TCK')
  # user nice system idle iowait irq softirq steal
  return (t[0] + t[1] + t[2] + t[5] + t[6]) / hz, t[7] / hz, own


class CpuContention:
  """CPU time other processes (and the hypervisor's steal) took while a block ran."""

  def __enter__(self):
    self.loadavg = os.getloadavg()[0]
    self._t0, self._start = time.perf_counter(), _cpu_seconds()
    return self

  def __exit__(self, *exc):
    end, wall = _cpu_seconds(), time.perf_counter() - self._t0
    self.result = dict(loadavg_1min_at_start=self.loadavg, wall_s=wall)
    if end[0] is not None and self._start[0] is not None:
      other = max(0.0, (end[0] - self._start[0]) - (end[2] - self._start[2]))
      self.result.update(other_cpu_s=other, steal_s=end[1] - self._start[1],
                         other_cpu_share=other / (wall * (os.cpu_count() or 1)))
    return False


def other_cpu_share(seconds=1.0):
  """Share of the machine's CPU that other processes used over the next `seconds`."""
  with CpuContention() as c:
    time.sleep(seconds)
  return c.result.get('other_cpu_share', 0.0)


def wait_for_idle(max_wait_s, threshold=0.1, log=print):
  """Waits (at most `max_wait_s`) until other processes use < `threshold` of the CPU.

  Returns the seconds waited. On a shared machine this keeps others' jobs out of timings.
  """
  if max_wait_s <= 0:
    return 0.0
  t0 = time.perf_counter()
  share = other_cpu_share()
  if share >= threshold:
    log(f'  waiting up to {max_wait_s:.0f} s for an idle CPU (others use {share:.0%})')
  while share >= threshold and time.perf_counter() - t0 < max_wait_s:
    share = other_cpu_share(5.0)
  return time.perf_counter() - t0


def _versions():
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tljax  # pylint: disable=g-import-not-at-top
  return {'tljax': tljax.__version__, 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'flax': flax.__version__, 'optax': optax.__version__, 'numpy': np.__version__,
          'tensorflow': tf.__version__, 'python': platform.python_version(),
          'jax_backend': jax.default_backend()}


# ---------------------------------------------------------------------------------------------
# Benchmark specs.


def model_specs(quick, models=('small_cnn', 'efficientnet_b0'), depthwise=None):
  """What to time per model: config fields, cases, timing, input source."""
  mode = 'quick' if quick else 'full'
  specs = []
  if 'small_cnn' in models:
    specs.append(dict(model='small_cnn', image_size=32, channels=1, batch_size=64,
                      num_classes=10, counting='model', cases=SMALL_CASES, impls=(None,),
                      timing=TIMING[mode]['small_cnn'], input='digits'))
  if 'efficientnet_b0' in models:
    n_base = _base_layer_count('efficientnet_b0')
    impls = tuple(depthwise or (('auto',) if quick else ('auto', 'grouped')))
    cases = (0, B0_TOP) if quick else (0, B0_TOP, n_base)
    specs.append(dict(model='efficientnet_b0', image_size=224, channels=3, batch_size=32,
                      num_classes=100, counting='base', cases=cases, n_base=n_base, impls=impls,
                      timing=TIMING[mode]['efficientnet_b0'], grouped_timing=TIMING[mode]['grouped'],
                      input='uint8_32'))
  for s in specs:
    s['input_timing'] = TIMING[mode]['input']
  return specs


def _base_layer_count(name):
  from tljax import models  # pylint: disable=g-import-not-at-top
  return sum(l.base for l in models.create(name, num_classes=1).keras_layers())


def full_case(spec):
  """The case that trains every layer (the reference of the time/FLOP fractions)."""
  return spec['n_base'] if spec['counting'] == 'base' else SMALL_CASES[-1]


def case_label(spec, n):
  """'1'..'23' for the small CNN; 'head', 'top', 'all' for EfficientNet."""
  if spec['counting'] != 'base':
    return str(n)
  return {0: 'head', B0_TOP: 'top', spec['n_base']: 'all'}.get(n, str(n))


def _config(spec):
  """configs/base.py's defaults (every field case_lib.make_case may read) with the spec's shape."""
  try:
    from configs import base  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  c.model = spec['model']
  c.image_size = spec['image_size']
  c.channels = spec['channels']
  c.batch_size = spec['batch_size']
  c.case_counting = spec['counting']
  c.cases = tuple(spec['cases'])
  c.learning_rate = 1e-3
  c.seed = 0
  c.xla_cpu_tuning = spec.get('xla_cpu_tuning', True)
  return c


def _random_batch(spec, seed=0):
  """Random images (uint8 range for EfficientNet, [0, 1] otherwise) and labels, NHWC float32."""
  rng = np.random.default_rng(seed)
  shape = (spec['batch_size'], spec['image_size'], spec['image_size'], spec['channels'])
  scale = 255.0 if spec['model'].startswith('efficientnet') else 1.0
  x = (rng.uniform(size=shape) * scale).astype(np.float32)
  y = rng.integers(0, spec['num_classes'], spec['batch_size']).astype(np.int32)
  return x, y


# ---------------------------------------------------------------------------------------------
# tljax.


def time_tljax_case(spec, n, impl=None, timing=None, wait_idle=0.0, log=print):
  """Compiles case `n` with compiled.compile_steps and times its train step."""
  import jax  # pylint: disable=g-import-not-at-top
  from tljax import accounting  # pylint: disable=g-import-not-at-top
  from tljax import case as case_lib  # pylint: disable=g-import-not-at-top
  from tljax import compiled  # pylint: disable=g-import-not-at-top
  config = _config(spec)
  timing = timing or spec['timing']
  case = case_lib.make_case(config, n, spec['num_classes'])
  model = case.model if impl is None else case.model.clone(depthwise_impl=impl)
  from tljax import parallel  # pylint: disable=g-import-not-at-top
  steps = compiled.compile_steps(model, case.tx, case.trainable, case.state, config,
                                 eval_batch=spec['batch_size'])
  train_c, compile_s, cost = steps.train, steps.compile_s, steps.train_cost
  twin = accounting.counting_model(model)
  if twin is not None:  # the FLOPs as counted, whichever step runs (README "FLOPs")
    twin_steps = compiled.compile_steps(twin, case.tx, case.trainable, case.state, config,
                                        eval_batch=spec['batch_size'],
                                        mesh=parallel.Mesh.on(accounting.counting_device()))
    cost = accounting.with_counted_flops(cost, twin_steps.train_cost)
  x, y = _random_batch(spec)
  x, y = jax.device_put(x), jax.device_put(y)
  holder = [case.state]

  def step():
    holder[0], _ = train_c(holder[0], x, y)
    return holder[0]

  waited = wait_for_idle(wait_idle, log=log)
  with CpuContention() as contention:
    step_s, samples = median_time(step, sync=jax.block_until_ready, **timing)
  flops = cost['flops']
  resolved = accounting.depthwise_impls(model)[0] if impl is not None else None
  return dict(case=n, label=case_label(spec, n), depthwise_impl=resolved,
              trainable_layers=len(case.trainable_names), step_s=step_s, samples_s=samples,
              examples_per_s=spec['batch_size'] / step_s, train_flops_per_step=flops,
              gflops_per_s=flops / step_s / 1e9, compile_s=compile_s,
              memory_bytes=cost.get('memory_bytes'),
              timing=dict(timing), other_cpu_share=contention.result.get('other_cpu_share'),
              waited_for_idle_s=waited)


def time_input(spec, timing=None):
  """Examples/s of the input pipeline: data.train_batches + data.preprocess, one thread."""
  from tljax import data  # pylint: disable=g-import-not-at-top
  from tljax import models  # pylint: disable=g-import-not-at-top
  timing = timing or spec['input_timing']
  if spec['input'] == 'digits':
    arrays = data.load('digits', 'train')
    source = 'digits train split (real, 32x32 float)'
    fit = data.fit_of('digits')
  else:
    rng = np.random.default_rng(0)
    n = 8 * spec['batch_size']
    arrays = data.Arrays(rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
                         rng.integers(0, spec['num_classes'], n).astype(np.int32),
                         spec['num_classes'], 'random', 'train')
    source = f'random uint8 32x32x3 (CIFAR-sized) resized to {spec["image_size"]}'
    fit = 'resize'
  prep = functools.partial(data.preprocess, image_size=spec['image_size'],
                           channels=spec['channels'], fit=fit,
                           pixel_scale=models.pixel_scale(spec['model']))

  def forever():
    epoch = 0
    while True:
      yield from data.train_batches(arrays, spec['batch_size'], seed=0, epoch=epoch, prep=prep)
      epoch += 1

  it = forever()
  step_s, samples = median_time(lambda: next(it), **timing)
  return dict(source=source, batch_size=spec['batch_size'], step_s=step_s, samples_s=samples,
              examples_per_s=spec['batch_size'] / step_s, timing=dict(timing))


# ---------------------------------------------------------------------------------------------
# Peers (each run in its own process: Keras fixes its backend at import).


def peer_available(name):
  """(available, note)."""
  missing = [m for m in PEER_MODULES[name] if importlib.util.find_spec(m) is None]
  if missing:
    return False, f'not installed ({", ".join(missing)})'
  return True, ''


def run_peer(name, spec, cases, timing, timeout=1800, wait_idle=0.0):
  """Runs `python -m benchmarks.step --peer=name` in a subprocess; its JSON, or a skip note."""
  ok, note = peer_available(name)
  if not ok:
    return dict(available=False, note=note, cases=[])
  env = dict(os.environ)
  env['KERAS_BACKEND'] = 'tensorflow'
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'peer.json')
    job = dict(peer=name, spec={k: v for k, v in spec.items() if k != 'timing'},
               cases=list(cases), timing=timing, wait_idle=wait_idle)
    job_path = os.path.join(tmp, 'job.json')
    with open(job_path, 'w') as f:
      json.dump(job, f)
    cmd = [sys.executable, '-m', 'benchmarks.step', f'--peer_job={job_path}', f'--peer_out={out}']
    try:
      with CpuContention() as contention:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
      return dict(available=False, note=f'timed out after {timeout} s', cases=[])
    if proc.returncode != 0 or not os.path.exists(out):
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
      return dict(available=False, note=f'failed (exit {proc.returncode}): {tail[0][:200]}',
                  cases=[])
    with open(out) as f:
      result = json.load(f)
  result.update(available=True, note=result.get('note', ''),
                other_cpu_share=contention.result.get('other_cpu_share'))
  return result


def _peer_main(job_path, out_path):
  with open(job_path) as f:
    job = json.load(f)
  fn = {'torch': _torch_peer, 'keras_tf': _keras_peer}[job['peer']]
  result = fn(job['spec'], job['cases'], job['timing'], job.get('wait_idle', 0.0))
  with open(out_path, 'w') as f:
    json.dump(result, f)


def _stderr(msg):
  print(msg, file=sys.stderr)


def _peer_case_kind(spec, n):
  """For EfficientNet peers: 'head', 'top' or 'all'; None if the peer cannot express case n."""
  if spec['counting'] != 'base':
    return n
  return {0: 'head', B0_TOP: 'top', spec['n_base']: 'all'}.get(n)


# --- PyTorch ---------------------------------------------------------------------------------


def _torch_small_cnn(torch, num_classes):
  """The small CNN as 23 modules, one per Keras layer (ReLU inside its conv/dense)."""
  nn = torch.nn
  layers, cin = [], 1
  for f in (32, 64, 128):
    for _ in range(2):
      layers += [nn.Sequential(nn.Conv2d(cin, f, 3, padding=1), nn.ReLU()),
                 nn.BatchNorm2d(f, eps=1e-3, momentum=0.01)]
      cin = f
    layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
  layers += [nn.Flatten(), nn.Sequential(nn.Linear(4 * 4 * 128, 128), nn.ReLU()),
             nn.BatchNorm1d(128, eps=1e-3, momentum=0.01), nn.Dropout(0.5),
             nn.Linear(128, num_classes)]
  return layers


def _torch_b0(torch, num_classes):
  """EfficientNetB0 (keras.applications layout, BN eps 1e-3) + the tljax head, by hand.

  Returns (model, {'base': modules, 'top': modules, 'head': modules}).
  """
  nn = torch.nn
  from tljax.models.efficientnet import block_specs  # pylint: disable=g-import-not-at-top

  def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

  class MBConv(nn.Module):
    """Inverted residual block with squeeze-excite and drop-connect."""

    def __init__(self, s):
      super().__init__()
      f = s.filters
      self.expand = (nn.Sequential(nn.Conv2d(s.filters_in, f, 1, bias=False), bn(f), nn.SiLU())
                     if s.expand_ratio != 1 else nn.Identity())
      self.dw = nn.Sequential(nn.Conv2d(f, f, s.kernel_size, s.strides, s.kernel_size // 2,
                                        groups=f, bias=False), bn(f), nn.SiLU())
      self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(f, s.se_filters, 1), nn.SiLU(),
                              nn.Conv2d(s.se_filters, f, 1), nn.Sigmoid())
      self.project = nn.Sequential(nn.Conv2d(f, s.filters_out, 1, bias=False), bn(s.filters_out))
      self.skip, self.drop = s.has_skip, s.drop_rate

    def forward(self, x):
      y = self.dw(self.expand(x))
      y = self.project(y * self.se(y))
      if not self.skip:
        return y
      if self.training and self.drop > 0:
        keep = torch.rand(y.shape[0], 1, 1, 1) >= self.drop
        y = y * keep / (1.0 - self.drop)
      return y + x

  class B0(nn.Module):
    """Normalisation, stem, 16 blocks, top conv, head."""

    def __init__(self):
      super().__init__()
      self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
      self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
      self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), bn(32), nn.SiLU())
      self.blocks = nn.Sequential(*[MBConv(s) for s in block_specs('b0')])
      self.top = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), bn(1280), nn.SiLU())
      self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(1280, 128), nn.ReLU(),
                                nn.BatchNorm1d(128, eps=1e-3, momentum=0.01), nn.Dropout(0.5),
                                nn.Linear(128, num_classes))

    def forward(self, x):
      x = (x / 255.0 - self.mean) / self.std
      return self.head(self.top(self.blocks(self.stem(x))))

  m = B0()
  return m, {'base': [m.stem, m.blocks, m.top], 'top': [m.top], 'head': [m.head]}


def _torch_peer(spec, cases, timing, wait_idle=0.0):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  x, y = _random_batch(spec)
  # channels_last: oneDNN's fast layout for convolutions (1.3-1.8x over NCHW here).
  x = torch.from_numpy(x).permute(0, 3, 1, 2)
  y = torch.from_numpy(y.astype(np.int64))
  out = []
  for n in cases:
    kind = _peer_case_kind(spec, n)
    if kind is None:
      continue
    if spec['model'] == 'small_cnn':
      layers = _torch_small_cnn(torch, spec['num_classes'])
      model = torch.nn.Sequential(*layers)
      frozen = layers[:len(layers) - n]
    else:
      model, groups = _torch_b0(torch, spec['num_classes'])
      frozen = {'head': groups['base'], 'top': [m for m in groups['base'] if m is not groups['top'][0]],
                'all': []}[kind]
    model.to(memory_format=torch.channels_last)
    model.train()
    for m in frozen:
      m.requires_grad_(False)
      m.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(model=model, opt=opt):
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(x), y)
      loss.backward()
      opt.step()
      return loss

    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    waited = wait_for_idle(wait_idle, log=_stderr)
    with CpuContention() as contention:
      step_s, samples = median_time(step, **timing)
    out.append(dict(case=n, step_s=step_s, samples_s=samples,
                    examples_per_s=spec['batch_size'] / step_s, first_step_s=first_s,
                    trainable_params=sum(p.numel() for p in params),
                    other_cpu_share=contention.result.get('other_cpu_share'),
                    waited_for_idle_s=waited))
  return dict(versions={'torch': torch.__version__}, threads=torch.get_num_threads(),
              note='eager, channels_last; frozen layers requires_grad=False, eval mode', cases=out)


# --- Keras 3 on TensorFlow -------------------------------------------------------------------


def _keras_small_cnn(keras, num_classes):
  layers = keras.layers
  stack = [keras.Input((32, 32, 1))]
  for f in (32, 64, 128):
    stack += [layers.Conv2D(f, 3, padding='same', activation='relu'), layers.BatchNormalization(),
              layers.Conv2D(f, 3, padding='same', activation='relu'), layers.BatchNormalization(),
              layers.MaxPooling2D(), layers.Dropout(0.25)]
  stack += [layers.Flatten(), layers.Dense(128, activation='relu'), layers.BatchNormalization(),
            layers.Dropout(0.5), layers.Dense(num_classes)]
  return keras.Sequential(stack)


def _keras_b0(keras, num_classes, size):
  layers = keras.layers
  base = keras.applications.EfficientNetB0(weights=None, include_top=False,
                                           input_shape=(size, size, 3))
  x = layers.GlobalAveragePooling2D()(base.output)
  x = layers.Dense(128, activation='relu')(x)
  x = layers.BatchNormalization()(x)
  x = layers.Dropout(0.5)(x)
  x = layers.Dense(num_classes)(x)
  return keras.Model(base.input, x), base


def _keras_peer(spec, cases, timing, wait_idle=0.0):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() != 'tensorflow':
    raise RuntimeError(f'Keras backend is {keras.backend.backend()!r}, not tensorflow.')
  xn, yn = _random_batch(spec)
  x, y = tf.constant(xn), tf.constant(yn)
  out, jit = [], None
  for n in cases:
    kind = _peer_case_kind(spec, n)
    if kind is None:
      continue
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    if spec['model'] == 'small_cnn':
      model = _keras_small_cnn(keras, spec['num_classes'])
      for layer in model.layers[:len(model.layers) - n]:
        layer.trainable = False
    else:
      model, base = _keras_b0(keras, spec['num_classes'], spec['image_size'])
      base_layers = [l for l in base.layers if not isinstance(l, keras.layers.InputLayer)]
      keep = {'head': 0, 'top': B0_TOP, 'all': len(base_layers)}[kind]
      for layer in base_layers[:len(base_layers) - keep]:
        layer.trainable = False
    # compile()'s defaults, as model.fit uses them (jit_compile='auto' is off on a CPU).
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first_s = time.perf_counter() - t0
    jit = bool(model.jit_compile)
    waited = wait_for_idle(wait_idle, log=_stderr)
    with CpuContention() as contention:
      step_s, samples = median_time(lambda m=model: m.train_on_batch(x, y), **timing)
    out.append(dict(case=n, step_s=step_s, samples_s=samples,
                    examples_per_s=spec['batch_size'] / step_s, first_step_s=first_s,
                    trainable_params=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
                    other_cpu_share=contention.result.get('other_cpu_share'),
                    waited_for_idle_s=waited))
  return dict(versions={'keras': keras.__version__, 'tensorflow': tf.__version__},
              jit_compile=jit, note=f'train_on_batch, compile() defaults (jit_compile={jit})',
              cases=out)


# ---------------------------------------------------------------------------------------------
# The run, the table.


def bench_model(spec, peers=PEERS, log=print, wait_idle=0.0):
  """Every case of `spec`: tljax (per depthwise impl), the input pipeline, the peers.

  wait_idle: before each timing, wait up to this many seconds for other processes to go quiet.
  """
  with CpuContention() as contention:
    result = _bench_model(spec, peers, log, wait_idle)
  result['contention'] = contention.result
  share = contention.result.get('other_cpu_share')
  if share is not None:
    log(f'  other processes used {share:.0%} of the CPU meanwhile')
  return result


def _bench_model(spec, peers, log, wait_idle):
  rows = []
  for impl in spec['impls']:
    for n in spec['cases']:
      timing = spec['timing'] if impl != 'grouped' else spec.get('grouped_timing', spec['timing'])
      row = time_tljax_case(spec, n, impl, timing, wait_idle, log)
      log(f'  tljax {spec["model"]} case {row["label"]}'
          + (f' ({row["depthwise_impl"]})' if row['depthwise_impl'] else '')
          + f': {row["step_s"] * 1e3:.1f} ms/step, compile {row["compile_s"]:.1f} s')
      rows.append(row)
  waited = wait_for_idle(wait_idle, log=log)
  inp = time_input(spec)
  inp['waited_for_idle_s'] = waited
  log(f'  input pipeline: {inp["examples_per_s"]:.0f} examples/s')
  peer_results = {}
  for name in peers:
    t0 = time.perf_counter()
    peer_results[name] = run_peer(name, spec, spec['cases'], spec['timing'],
                                  wait_idle=wait_idle)
    log(f'  peer {name}: {time.perf_counter() - t0:.0f} s'
        + (f' ({peer_results[name]["note"]})' if not peer_results[name]['available'] else ''))
  result = dict(model=spec['model'], batch_size=spec['batch_size'],
                image_size=spec['image_size'], channels=spec['channels'],
                num_classes=spec['num_classes'], counting=spec['counting'],
                full_case=full_case(spec), cases=rows, input=inp, peers=peer_results)
  _derive(result)
  return result


def _derive(result):
  """Per row: peers' numbers, the ratio to the fastest peer, time and FLOP fractions of full."""
  full_n = result['full_case']
  peer_by_case = {name: {c['case']: c for c in p.get('cases', [])}
                  for name, p in result['peers'].items()}
  full_peer = {name: cs.get(full_n) for name, cs in peer_by_case.items()}
  for row in result['cases']:
    row['peers'] = {name: cs[row['case']]['examples_per_s']
                    for name, cs in peer_by_case.items() if row['case'] in cs}
    best = max(row['peers'].items(), key=lambda kv: kv[1], default=None)
    row['fastest_peer'] = best[0] if best else None
    row['ratio_to_fastest_peer'] = row['examples_per_s'] / best[1] if best else None
    full = [r for r in result['cases']
            if r['case'] == full_n and r['depthwise_impl'] == row['depthwise_impl']]
    if full:
      row['time_frac_full'] = row['step_s'] / full[0]['step_s']
      row['flops_frac_full'] = row['train_flops_per_step'] / full[0]['train_flops_per_step']
      row['time_to_flops'] = row['time_frac_full'] / row['flops_frac_full']
    else:
      row['time_frac_full'] = row['flops_frac_full'] = row['time_to_flops'] = None
    shares = [row.get('other_cpu_share')] + [
        cs[row['case']].get('other_cpu_share') for cs in peer_by_case.values() if row['case'] in cs]
    shares = [v for v in shares if v is not None]
    row['max_other_cpu_share'] = max(shares) if shares else None
    row['peer_time_frac_full'] = {
        name: cs[row['case']]['step_s'] / full_peer[name]['step_s']
        for name, cs in peer_by_case.items() if row['case'] in cs and full_peer[name]}


def _f(v, fmt):
  return '-' if v is None else format(v, fmt)


def format_tables(result):
  """The speed table and the time-vs-FLOPs table of one model, as text."""
  peers = list(result['peers'])
  head = (f'{result["model"]}: batch {result["batch_size"]}, {result["image_size"]}x'
          f'{result["image_size"]}x{result["channels"]}, {result["counting"]!r} counting; '
          f'input pipeline {result["input"]["examples_per_s"]:.0f} ex/s '
          f'({result["input"]["source"]})')
  share = result.get('contention', {}).get('other_cpu_share')
  if share is not None:
    head += (f'\nother processes used {share:.0%} of the CPU during these timings'
             + (' (timings disturbed)' if share > 0.05 else ''))
  cols = (f'{"case":<12}{"layers":>7}{"ms/step":>10}{"ex/s":>9}{"GFLOP":>9}{"GFLOP/s":>9}'
          f'{"compile s":>11}{"input ex/s":>12}'
          + ''.join(f'{p + " ex/s":>15}' for p in peers) + f'{"tljax/best":>12}{"others%":>9}')
  lines = [head, cols, '-' * len(cols)]
  for r in result['cases']:
    label = r['label'] + (f' {r["depthwise_impl"]}' if r['depthwise_impl'] else '')
    lines.append(
        f'{label:<12}{r["trainable_layers"]:>7}{r["step_s"] * 1e3:>10.1f}'
        f'{r["examples_per_s"]:>9.1f}{r["train_flops_per_step"] / 1e9:>9.2f}'
        f'{r["gflops_per_s"]:>9.1f}{r["compile_s"]:>11.1f}'
        f'{result["input"]["examples_per_s"]:>12.0f}'
        + ''.join(f'{_f(r["peers"].get(p), ".1f"):>15}' for p in peers)
        + f'{_f(r["ratio_to_fastest_peer"], ".2f"):>12}'
        + f'{_f(None if r["max_other_cpu_share"] is None else 100 * r["max_other_cpu_share"], ".0f"):>9}')
  notes = [f'  {p}: {v["note"]}' for p, v in result['peers'].items() if v.get('note')]
  notes.append('  tljax/best = tljax ex/s / fastest peer ex/s; others% = most CPU other processes '
               'took during any timing of the row')
  if notes:
    lines += ['peers:'] + notes
  lines.append('')
  cols2 = (f'{"case":<12}{"time/full":>11}{"FLOPs/full":>12}{"quotient":>10}'
           + ''.join(f'{p + " time/full":>20}' for p in peers))
  lines += [f'{result["model"]}: step time and train FLOPs as fractions of full fine-tuning '
            f'(target: quotient <= {TRACKING_TARGET}; * = the case is slower than its FLOP share '
            f'by more, + = faster than it by more than {TRACKING_TARGET}x)', cols2,
            '-' * len(cols2)]
  for r in result['cases']:
    label = r['label'] + (f' {r["depthwise_impl"]}' if r['depthwise_impl'] else '')
    q = r['time_to_flops']
    flag = ' ' if q is None else '*' if q > TRACKING_TARGET else '+' if q < 1 / TRACKING_TARGET else ' '
    lines.append(f'{label:<12}{_f(r["time_frac_full"], ".3f"):>11}'
                 f'{_f(r["flops_frac_full"], ".3f"):>12}{_f(q, ".2f"):>9}{flag}'
                 + ''.join(f'{_f(r["peer_time_frac_full"].get(p), ".3f"):>20}' for p in peers))
  return '\n'.join(lines)


def run(quick=False, models=('small_cnn', 'efficientnet_b0'), peers=PEERS, depthwise=None,
        log=print, specs=None, wait_idle=0.0, xla_cpu_tuning=True, prefix=True):
  """The whole benchmark: a JSON-able dict. `specs` replaces model_specs(...) when given."""
  from tljax import backend  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  specs = specs or model_specs(quick, models, depthwise)
  for spec in specs:
    spec.setdefault('xla_cpu_tuning', xla_cpu_tuning)
  result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                quick=quick, machine=cpu_model(), versions=_versions(),
                timing='median over repeat timings of number steps after warmup steps; '
                       'one host sync per timing',
                xla_compiler_options=backend.compiler_options(
                    _config(specs[0]) if specs else None),
                models=[])
  for spec in specs:
    log(f'{spec["model"]}:')
    result['models'].append(bench_model(spec, peers, log, wait_idle))
    if prefix:
      from benchmarks import prefix as bench_prefix  # pylint: disable=g-import-not-at-top
      result['models'][-1]['prefix_cache'] = bench_prefix.bench(_config(spec), spec, quick, log)
  for m in result['models']:
    for p in m['peers'].values():
      result['versions'].update(p.get('versions', {}))
  result['wall_s'] = time.perf_counter() - t0
  result['waited_for_idle_s'] = sum(
      c.get('waited_for_idle_s', 0.0) for m in result['models']
      for c in m['cases'] + [m['input']] + [pc for p in m['peers'].values()
                                            for pc in p.get('cases', [])])
  return result


def _args(argv):
  p = argparse.ArgumentParser(prog='python -m benchmarks.step', description=__doc__)
  p.add_argument('--out', help='JSON file to write.')
  p.add_argument('--quick', action='store_true', help='Fewer timed steps; EfficientNet without '
                 "its 'all' case and 'grouped' rows (about 3 minutes on an idle 2-core CPU).")
  p.add_argument('--models', default='small_cnn,efficientnet_b0')
  p.add_argument('--peers', default=','.join(PEERS), help="Comma list; '' for none.")
  p.add_argument('--depthwise', default=None,
                 help='EfficientNet depthwise impls to time, e.g. auto,grouped.')
  p.add_argument('--wait_idle', type=float, default=0.0,
                 help='Before each timing wait up to this many seconds for other processes '
                 'to leave the CPU (shared machines).')
  p.add_argument('--no_prefix_cache', action='store_true',
                 help='Skip the end-to-end runs with and without the frozen-prefix cache.')
  p.add_argument('--no_xla_cpu_tuning', action='store_true',
                 help="Compile tljax's steps with XLA's default CPU options (tljax/backend.py), "
                 'to measure what the tuning buys.')
  p.add_argument('--peer_job', help=argparse.SUPPRESS)
  p.add_argument('--peer_out', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  args = _args(argv)
  if args.peer_job:
    _peer_main(args.peer_job, args.peer_out)
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  models = tuple(m for m in args.models.split(',') if m)
  peers = tuple(p for p in args.peers.split(',') if p)
  bad = [p for p in peers if p not in PEERS]
  if bad:
    sys.exit(f'benchmarks.step: unknown peers {bad}; known: {list(PEERS)}')
  depthwise = tuple(args.depthwise.split(',')) if args.depthwise else None
  result = run(args.quick, models, peers, depthwise, log=_stderr, wait_idle=args.wait_idle,
               xla_cpu_tuning=not args.no_xla_cpu_tuning, prefix=not args.no_prefix_cache)
  print(f'tljax bench {result["date"]}, {result["machine"]["cpu"]}, '
        f'{result["machine"]["cores"]} cores; ' + ', '.join(
            f'{k} {v}' for k, v in result['versions'].items()))
  print(f'tljax XLA compiler options: {result["xla_compiler_options"] or "XLA defaults"}')
  print(f'wall {result["wall_s"]:.0f} s, of which {result["waited_for_idle_s"]:.0f} s waiting '
        'for other processes to leave the CPU')
  for m in result['models']:
    print()
    print(format_tables(m))
    if m.get('prefix_cache'):
      from benchmarks import prefix as bench_prefix  # pylint: disable=g-import-not-at-top
      print()
      print(bench_prefix.format_table(m['prefix_cache']))
  if args.out:
    from tljax import report  # pylint: disable=g-import-not-at-top
    report.write_json(args.out, result)
    print(f'\nwritten to {args.out}')


if __name__ == '__main__':
  main()
