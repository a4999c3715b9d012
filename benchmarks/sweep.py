"""Whole-sweep benchmark: the thesis's small-CNN sweep end to end in tljax, PyTorch and Keras-TF.

  python -m benchmarks.sweep [--scale=1.0] [--frameworks=tljax,torch,keras] [--out=FILE.json]
      [--source_dir=DIR --target_dir=DIR] [--pretrain_epochs=3] [--epochs=2]
      [--cases=1,4,9,11,17,23] [--batch_size=64]

Generates the data in memory (a source task of 50,000 + 10,000 and a target task of
60,000 + 10,000 grayscale 32x32 images, 10 classes each: CIFAR-sized pretraining, MNIST-sized
transfer, the thesis's tests 1 and 5), or reads two image folders with tljax's folder loader
(its prepare time is a row of its own, outside the totals). Then, one framework after another,
each in a fresh process with the machine to itself, times what a user's run of the sweep takes:
the imports, source pretraining (every layer, then evaluated and saved) and every freeze case
(new head on the pretrained weights, frozen layers, training with checkpoints, evaluation on the
target's test split), compile, prefix-cache fill and summary included. tljax runs
`tljax.sweep.train_and_evaluate` with configs/folders.py's settings (configs/base.py's thesis
defaults: batch 64, Adam 1e-3, BatchNorm momentum 0.99; pretraining 3 epochs, cases 2) on the
same arrays; the peers are the scripts a user would write (benchmarks/torch_peers.py,
benchmarks/keras_peers.py) with the same model, optimiser, batch and epochs. Prints a table per
phase with tljax / fastest peer, and each framework's test accuracies.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks import tables
from benchmarks import timing

FRAMEWORKS = ('tljax', 'torch', 'keras')
FRAMEWORK_MODULES = {'tljax': ('jax',), 'torch': ('torch',), 'keras': ('keras', 'tensorflow')}
CASES = (1, 4, 9, 11, 17, 23)  # the thesis's six small-CNN cases (Figure 3.1)
# Full-size split sizes: CIFAR-100's 50,000 + 10,000 (test 1's source) and MNIST's 60,000 +
# 10,000 (test 5's target), at the small CNN's input, 32x32x1.
SIZES = {'source': (50_000, 10_000), 'target': (60_000, 10_000)}
CLASSES = 10
SIDE = 32
SPLITS = ('train', 'test')
PROGRESS = '[sweep] '  # the workers' progress lines, forwarded by the parent


def log(msg):
  timing.stderr(PROGRESS + msg)


# ---------------------------------------------------------------------------------------------
# The data.


def generate(role, split, n, classes=CLASSES, seed=0):
  """`n` grayscale 32x32 uint8 images with learnable, class-dependent structure; (images, labels).

  Each image is a sinusoidal grating with a random phase and contrast, plus Gaussian pixel
  noise. Source task: class k is the orientation k * 180 / classes degrees. Target task: one of
  5 orientations (between the source's) at one of 2 spatial frequencies. Orientations and
  frequencies are jittered per image, so neighbouring classes overlap a little: neither task is
  learnt perfectly, and frozen source features serve the target only in part.
  """
  rng = np.random.default_rng([seed, role == 'target', split == 'test'])
  labels = np.arange(n, dtype=np.int32) % classes
  rng.shuffle(labels)
  yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
  images = np.empty((n, SIDE, SIDE, 1), np.uint8)
  for start in range(0, n, 8192):
    lab = labels[start:start + 8192]
    m = len(lab)
    if role == 'source':
      angle, freq, jitter = lab * np.pi / classes, np.full(m, 4.0), 0.1
    else:
      half = max(classes // 2, 1)
      angle = (lab % half) * np.pi / half + np.pi / (2 * half)
      freq, jitter = np.where(lab < half, 3.0, 4.5), 0.15
    angle = angle + rng.normal(0.0, jitter, m)
    freq = freq + rng.normal(0.0, 0.35, m)
    proj = (xx[None] * np.cos(angle)[:, None, None] + yy[None] * np.sin(angle)[:, None, None])
    wave = np.sin(2 * np.pi * freq[:, None, None] * proj + rng.uniform(0, 2 * np.pi, m)[:, None, None])
    img = 128 + 80 * rng.uniform(0.4, 1.0, m)[:, None, None] * wave
    img += rng.normal(0.0, 60.0, (m, SIDE, SIDE))
    images[start:start + m, ..., 0] = np.clip(img, 0, 255).astype(np.uint8)
  return images, labels


def sizes(scale, batch_size):
  """{role: (train, test)} at `scale`: at least one train batch and one example per class."""
  return {role: (max(int(round(tr * scale)), batch_size), max(int(round(te * scale)), CLASSES))
          for role, (tr, te) in SIZES.items()}


def make_data(directory, scale, batch_size, source_dir='', target_dir='', seed=0):
  """Writes the four splits as .npy files into `directory`; what they are (JSON-able).

  With folders: tljax's folder loader prepares them at the small CNN's input (timed: the
  'data prepare' row), and `scale` < 1 keeps a fixed random subset of that share of each split.
  """
  info = dict(generated=not source_dir, prepare_s=None, roles={})
  if source_dir:
    splits, info['prepare_s'] = _load_folders(directory, source_dir, target_dir)
  want = sizes(scale, batch_size)
  for role in ('source', 'target'):
    n_classes = CLASSES
    for split, n in zip(SPLITS, want[role]):
      if source_dir:
        images, labels, n_classes = splits[(role, split)]
        floor = batch_size if split == 'train' else n_classes
        n = min(len(labels), max(int(round(len(labels) * scale)), floor))
        if n < len(labels):
          keep = np.sort(np.random.default_rng([seed, 7]).permutation(len(labels))[:n])
          images, labels = images[keep], labels[keep]
      else:
        images, labels = generate(role, split, n, seed=seed)
      np.save(os.path.join(directory, f'{role}_{split}_images.npy'), images)
      np.save(os.path.join(directory, f'{role}_{split}_labels.npy'), labels)
      info['roles'].setdefault(role, dict(classes=int(n_classes)))[split] = len(labels)
    info['roles'][role]['folder'] = (source_dir if role == 'source' else target_dir) or None
  return info


def _load_folders(directory, source_dir, target_dir):
  """{(role, split): (images, labels, classes)} from tljax's folder loader; its seconds."""
  from tljax.data import datasets  # pylint: disable=g-import-not-at-top
  model_input = datasets.ModelInput(SIDE, 1, os.path.join(directory, 'cache'))
  out = {}
  t0 = time.perf_counter()
  for role, root in (('source', source_dir), ('target', target_dir)):
    for split in SPLITS:
      a = datasets.load('image_folder', split, root=root, model_input=model_input)
      out[(role, split)] = (np.asarray(a.images), a.labels, a.num_classes)
  seconds = time.perf_counter() - t0
  shutil.rmtree(os.path.join(directory, 'cache'), ignore_errors=True)
  return out, seconds


def load_data(directory):
  """{(role, split): (images uint8 NHWC, labels int32)} from make_data's files."""
  return {(role, split): (np.load(os.path.join(directory, f'{role}_{split}_images.npy')),
                          np.load(os.path.join(directory, f'{role}_{split}_labels.npy')))
          for role in ('source', 'target') for split in SPLITS}


# ---------------------------------------------------------------------------------------------
# The workers (each in its own process).


def _tljax_worker(job, t_start):
  """train_and_evaluate on the job's arrays, with a wall-clock timeline of its phases."""
  t0 = time.perf_counter()
  from unittest import mock  # pylint: disable=g-import-not-at-top
  from tljax.runtime import backend  # pylint: disable=g-import-not-at-top
  from tljax.training import case as case_lib  # pylint: disable=g-import-not-at-top
  from tljax.training import compiled  # pylint: disable=g-import-not-at-top
  from tljax.data import datasets  # pylint: disable=g-import-not-at-top
  from tljax.data import inputs  # pylint: disable=g-import-not-at-top
  from tljax.training import pretrain  # pylint: disable=g-import-not-at-top
  from tljax.sweep import runner  # pylint: disable=g-import-not-at-top
  imports_s = time.perf_counter() - t0
  t1 = time.perf_counter()
  raw = load_data(job['data'])
  classes = {role: job['data_info']['roles'][role]['classes'] for role in ('source', 'target')}
  arrays = {key: datasets.Arrays(images, labels, classes[key[0]], f'{key[0]} data', key[1])
            for key, (images, labels) in raw.items()}
  load_s = time.perf_counter() - t1
  config = tljax_config(job)
  line = Timeline()

  def label(spec):
    return spec.name[len('last:'):] if spec.name.startswith('last:') else spec.name

  def phase(fn, name_of, part, after=None, message=None):
    """`fn` wrapped: its call is (name_of(*args), part); `after` the part that follows."""
    def wrapped(*args, **kwargs):
      name = name_of(*args)
      line.switch(name, part)
      if message:
        log(f'tljax: {message(name)}')
      try:
        return fn(*args, **kwargs)
      finally:
        line.switch(*(after or (name, 'outputs')))
    return wrapped

  case_parts, variables, train_run, run_seed = (case_lib.case_parts, pretrain.variables,
                                               runner.train_run, runner._run_seed)  # pylint: disable=protected-access
  # The timeline: a case's plan (made, its steps handed to the compile pool, before pretraining)
  # and its run count for the case; what follows a run (the summary, CSVs, figures) counts as its
  # 'outputs'. The pool's threads compile beside it: summary['compile'].
  patches = [
      mock.patch.object(inputs, 'load', lambda config, role, split: arrays[(role, split)]),
      mock.patch.object(case_lib, 'case_parts', phase(
          case_parts, lambda c, spec, *a: f'case {label(spec)}', 'plan',
          after=('other', 'setup'), message=lambda n: f'compiling {n}')),
      mock.patch.object(pretrain, 'variables', phase(
          variables, lambda *a: 'pretraining', 'run', message=lambda n: 'pretraining')),
      mock.patch.object(runner, 'train_run', phase(
          train_run, lambda sw, plan, spec, *a: f'case {label(spec)}', 'run',
          message=lambda n: f'training {n}')),
      mock.patch.object(runner, '_run_seed', phase(run_seed, lambda *a: 'other', 'setup',
                                                  after=('other', 'outputs'))),
      # Every step tljax compiles goes through these two (lowering + XLA, or XLA alone); those
      # of the main thread count for its phase, the compile pool's in summary['compile'].
      mock.patch.object(compiled, 'compile_step', line.timed_compile(compiled.compile_step)),
      mock.patch.object(backend, 'compile', line.timed_compile(backend.compile)),
  ]
  if job['data_info']['generated']:
    identity = {role: dict(dataset='generated', classes=classes[role],
                           **{s: job['data_info']['roles'][role][s] for s in SPLITS})
                for role in ('source', 'target')}
    patches.append(mock.patch.object(inputs, 'data_identity', lambda config: identity))
  workdir = os.path.join(job['workdir'], 'tljax')
  for p in patches:
    p.start()
  try:
    line.start()
    summary = runner.train_and_evaluate(config, workdir)
    sweep_s = line.stop()
  finally:
    for p in reversed(patches):
      p.stop()
  pre = summary['pretraining']['0']
  phases = {'pretraining': dict(wall_s=sum(line.phase('pretraining').values()),
                                parts=line.phase('pretraining'),
                                compile_s=line.compile_s.get('pretraining', 0.0),
                                recorded_compile_s=pre['compile_s'],
                                test_accuracy=pre['test_accuracy'], steps=pre['steps'],
                                train_wall_s=pre['wall_s'])}
  for rec in summary['runs']:
    name = f'case {rec["case"][len("last:"):]}' if rec['case'].startswith('last:') else rec['case']
    phases[name] = dict(wall_s=sum(line.phase(name).values()), parts=line.phase(name),
                        compile_s=line.compile_s.get(name, 0.0),
                        recorded_compile_s=rec['compile_s'], test_accuracy=rec['test_accuracy'],
                        steps=rec['steps'], train_wall_s=rec['wall_s'],
                        prefix_cache=rec['prefix_cache'],
                        prefix_cache_cut_layer=rec['prefix_cache_cut_layer'])
  other = line.phase('other')
  return dict(framework='tljax', versions=timing.versions(), start_s=t0 - t_start,
              imports_s=imports_s, data_load_s=load_s, phases=phases,
              other_s=sum(other.values()), other_parts=other, sweep_s=sweep_s,
              other_compile_s=line.compile_s.get('other', 0.0),
              eval_compile_s=summary['eval_compile_s'], compile_s=sum(line.compile_s.values()),
              compile_pool=summary['compile'],
              note='tljax.sweep.train_and_evaluate, configs/folders.py settings; a case row holds '
                   'its compile (before pretraining), prefix-cache fill, training, evaluation, '
                   'checkpoints and the summary written after it; compile s = lowering + XLA '
                   'compilation of every step in that phase')


class Timeline:
  """Wall seconds per (phase, part): each instant belongs to the part switched to last."""

  def __init__(self):
    self.seconds, self.current, self._t = {}, ('other', 'setup'), None
    self.compile_s = {}  # phase -> seconds spent compiling (lowering and XLA) in it
    self._depth = 0

  def timed_compile(self, fn):
    """`fn` (a compile) wrapped: in the main thread, its seconds count for the current phase
    (outermost call); the compile pool's threads are timed by the pool."""
    def wrapped(*args, **kwargs):
      if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
      self._depth += 1
      t = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self._depth -= 1
        if not self._depth:
          phase = self.current[0]
          self.compile_s[phase] = self.compile_s.get(phase, 0.0) + time.perf_counter() - t
    return wrapped

  def start(self):
    self._t0 = self._t = time.perf_counter()

  def switch(self, phase, part):
    now = time.perf_counter()
    self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self._t
    self.current, self._t = (phase, part), now

  def stop(self):
    self.switch('other', 'setup')
    return time.perf_counter() - self._t0

  def phase(self, name):
    """{part: seconds} of one phase."""
    return {part: s for (ph, part), s in self.seconds.items() if ph == name}


def tljax_config(job):
  """configs/folders.py (the thesis's small-CNN defaults, pretraining 3 epochs, cases 2) with the
  job's epochs, cases and batch; a fresh cache (pretraining runs), no progress bars."""
  try:
    from configs import folders  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import folders  # pylint: disable=g-import-not-at-top
  c = folders.get_config()
  c.name = 'sweep_bench'
  c.pretrain_epochs = job['pretrain_epochs']
  c.epochs = job['epochs']
  c.cases = tuple(job['cases'])
  c.batch_size = job['batch_size']
  c.eval_batch_size = job['eval_batch_size']
  c.learning_rate = c.pretrain_learning_rate = job['learning_rate']
  c.seeds = (job['seed'],)
  c.new_head = 'always'  # a new classifier for the target task, as the peers attach
  c.cache_dir = os.path.join(job['workdir'], 'tljax_cache')
  c.compilation_cache_dir = job.get('compilation_cache_dir', '')  # '' = under the fresh cache
  c.progress = False
  c.compile_workers = 0  # the compile pool, a thread per core (summary['compile'])
  info = job['data_info']['roles']
  c.source_data_dir = info['source']['folder'] or ''
  c.target_data_dir = info['target']['folder'] or ''
  return c


def _worker_main(job_path, out_path):
  t_start = _process_start()
  with open(job_path) as f:
    job = json.load(f)
  name = job['framework']
  log(f'{name}: starting')
  if name == 'tljax':
    result = _tljax_worker(job, t_start)
  else:
    t0 = time.perf_counter()
    if name == 'torch':
      from benchmarks import torch_peers as peer  # pylint: disable=g-import-not-at-top
    else:
      from benchmarks import keras_peers as peer  # pylint: disable=g-import-not-at-top
    result = peer.sweep(job, load_data(job['data']), log=lambda m: log(f'{name}: {m}'))
    result['start_s'] = t0 - t_start
  log(f'{name}: done, {result["imports_s"] + result["sweep_s"]:.1f} s')
  with open(out_path, 'w') as f:
    json.dump(result, f)


def _process_start():
  """time.perf_counter() at this process's start (Linux /proc; now elsewhere)."""
  try:
    with open('/proc/self/stat') as f:
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/uptime') as f:
      uptime = float(f.read().split()[0])
    return time.perf_counter() - (uptime - ticks / os.sysconf('SC_CLK_TCK'))
  except (OSError, ValueError, IndexError):
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# The run.


def available(name):
  """(available, note) of a framework's modules."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = [m for m in FRAMEWORK_MODULES[name] if importlib.util.find_spec(m) is None]
  return (False, f'not installed ({", ".join(missing)})') if missing else (True, '')


def run(frameworks=FRAMEWORKS, *, scale=1.0, pretrain_epochs=3, epochs=2, cases=CASES,
        batch_size=64, eval_batch_size=256, learning_rate=1e-3, source_dir='', target_dir='',
        workdir='', timeout=6 * 3600, seed=0, wait_idle=0.0, progress=timing.stderr,
        compilation_cache_dir=''):
  """The whole benchmark: data, then each framework's sweep in its own process; a JSON-able
  dict (`tables.sweep_table` formats it). wait_idle: before each framework, wait up to this
  many seconds for other processes to leave the CPU. compilation_cache_dir: tljax's persistent
  compilation cache ('' = a fresh one per run, every step compiled; a directory kept between
  two runs times the second run's loads instead)."""
  t0 = time.perf_counter()
  own = not workdir
  workdir = workdir or tempfile.mkdtemp(prefix='tljax_sweep_bench_')
  data_dir = os.path.join(workdir, 'data')
  os.makedirs(data_dir, exist_ok=True)
  try:
    progress(PROGRESS + ('reading the folders' if source_dir else 'generating the data'))
    t1 = time.perf_counter()
    info = make_data(data_dir, scale, batch_size, source_dir, target_dir, seed)
    data_s = time.perf_counter() - t1
    progress(PROGRESS + f'data ready in {data_s:.1f} s: ' + ', '.join(
        f'{role} {v["train"]:,} + {v["test"]:,} ({v["classes"]} classes)'
        for role, v in info['roles'].items()))
    job = dict(data=data_dir, data_info=info, pretrain_epochs=pretrain_epochs, epochs=epochs,
               cases=list(cases), batch_size=batch_size, eval_batch_size=eval_batch_size,
               learning_rate=learning_rate, seed=seed,
               compilation_cache_dir=os.path.abspath(compilation_cache_dir)
               if compilation_cache_dir else '')
    results = {}
    for name in frameworks:
      ok, note = available(name)
      if not ok:
        results[name] = dict(available=False, note=note)
        progress(PROGRESS + f'{name}: skipped, {note}')
        continue
      fw_dir = os.path.join(workdir, name)
      os.makedirs(fw_dir, exist_ok=True)
      waited = timing.wait_for_idle(wait_idle, log=lambda m: progress(PROGRESS + m.strip()))
      result, note, contention = timing.run_job(
          'benchmarks.sweep', dict(job, framework=name, workdir=fw_dir), timeout=timeout,
          forward=lambda line: line.startswith(PROGRESS) and progress(line))
      if result is None:
        results[name] = dict(available=False, note=note)
        progress(PROGRESS + f'{name}: {note}')
      else:
        results[name] = dict(result, available=True, contention=contention,
                             waited_for_idle_s=waited)
      shutil.rmtree(fw_dir, ignore_errors=True)
  finally:
    if own:
      shutil.rmtree(workdir, ignore_errors=True)
  return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              machine=timing.cpu_model(), data=dict(info, seconds=data_s),
              settings=dict(model='small_cnn', image=f'{SIDE}x{SIDE}x1', scale=scale,
                            pretrain_epochs=pretrain_epochs, epochs=epochs, cases=list(cases),
                            batch_size=batch_size, eval_batch_size=eval_batch_size,
                            optimizer=f'Adam({learning_rate})', seed=seed,
                            compilation_cache_dir=compilation_cache_dir or None),
              frameworks=results, wall_s=time.perf_counter() - t0)


def _args(argv):
  p = argparse.ArgumentParser(prog='python -m benchmarks.sweep',
                              description=__doc__.split('\n')[0])
  p.add_argument('--scale', type=float, default=1.0,
                 help='Multiplies every split size (default 1: 50,000 + 10,000 source, '
                 '60,000 + 10,000 target).')
  p.add_argument('--frameworks', default=','.join(FRAMEWORKS),
                 help='Comma list of tljax, torch, keras.')
  p.add_argument('--out', help='JSON file to write the raw results to.')
  p.add_argument('--source_dir', default='', help='Source image folder (train/<class>/..., '
                 'test/<class>/...) instead of generated data; needs --target_dir.')
  p.add_argument('--target_dir', default='', help='Target image folder.')
  p.add_argument('--pretrain_epochs', type=int, default=3)
  p.add_argument('--epochs', type=int, default=2, help='Epochs per case.')
  p.add_argument('--cases', default=','.join(map(str, CASES)),
                 help='Comma list of small-CNN cases (trainable layers).')
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--workdir', default='', help='Where the data and checkpoints go while running '
                 '(default: a temporary directory, removed at the end).')
  p.add_argument('--timeout', type=float, default=6 * 3600, help='Seconds per framework.')
  p.add_argument('--wait_idle', type=float, default=0.0,
                 help='Before each framework wait up to this many seconds for other processes '
                 'to leave the CPU (shared machines: PyTorch slows down several times when its '
                 'threads share the cores).')
  p.add_argument('--compilation_cache_dir', default='',
                 help="tljax's persistent compilation cache: '' = a fresh one (every step "
                 'compiled); the same directory in two runs times the second run loading them.')
  p.add_argument('--peer_job', help=argparse.SUPPRESS)
  p.add_argument('--peer_out', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ INFO lines (folders)
  args = _args(argv)
  if args.peer_job:
    _worker_main(args.peer_job, args.peer_out)
    return
  frameworks = tuple(f for f in args.frameworks.split(',') if f)
  bad = [f for f in frameworks if f not in FRAMEWORKS]
  if bad:
    sys.exit(f'benchmarks.sweep: unknown frameworks {bad}; known: {list(FRAMEWORKS)}')
  if bool(args.source_dir) != bool(args.target_dir):
    sys.exit('benchmarks.sweep: --source_dir and --target_dir go together.')
  result = run(frameworks, scale=args.scale, pretrain_epochs=args.pretrain_epochs,
               epochs=args.epochs, cases=tuple(int(c) for c in args.cases.split(',') if c),
               batch_size=args.batch_size, source_dir=args.source_dir,
               target_dir=args.target_dir, workdir=args.workdir, timeout=args.timeout,
               wait_idle=args.wait_idle, compilation_cache_dir=args.compilation_cache_dir)
  print(tables.sweep_table(result))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
    print(f'\nwritten to {args.out}')


if __name__ == '__main__':
  main()
