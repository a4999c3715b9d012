"""Two processes on localhost (jax.distributed, CPU, gloo): process 0 alone writes, same numbers."""

import collections
import json
import os
import shutil
import socket
import subprocess
import sys

from configs import base
from tljax.sweep import fingerprints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of a run of `config(...)`; every file write (report.atomic_write_bytes, metrics
# lines, the pretraining cache) is logged to <workdir>.writes_<process>.txt.
SCRIPT = r'''
import os, sys
root, workdir, cache, n, pid, port = sys.argv[1:7]
sys.path[:0] = [root, os.path.join(root, 'tests')]
from test_multihost import config
from tljax.runtime import report
from tljax.sweep import runner
from tljax.training import pretrain
log = open(f'{workdir}.writes_{pid}.txt', 'w')
def logged(fn):
  def wrapper(path, *a, **k):
    log.write(os.path.abspath(path) + '\n'); log.flush()
    return fn(path, *a, **k)
  return wrapper
report.atomic_write_bytes = logged(report.atomic_write_bytes)
pretrain._save = logged(pretrain._save)
real_write = report.MetricsWriter.write
def write(self, **record):
  if self._f is not None:
    log.write('metrics\n'); log.flush()
  real_write(self, **record)
report.MetricsWriter.write = write
runner.train_and_evaluate(config(cache, int(n), int(pid), port), workdir)
'''


def config(cache, num_processes=1, process_id=0, port=0):
  """The run: case last:4 (dense, BatchNorm in training mode: statistics over the global batch),
  checkpoints at every step (saved collectively), from the pretrained weights in `cache`."""
  from conftest import shrunk_default  # pylint: disable=g-import-not-at-top
  c = shrunk_default(cache)
  c.cases = ('last:4',)
  c.prefix_cache = False  # off with several processes: the same programs in the reference
  c.checkpoint_every_steps = 1
  c.data_parallel = True
  c.num_processes, c.process_id = num_processes, process_id
  c.coordinator_address = f'localhost:{port}' if num_processes > 1 else ''
  return c


def _pretrained_cache(tmp_path):
  """A pretraining cache (random weights) for both runs: every process reads it."""
  import jax  # pylint: disable=g-import-not-at-top
  from tljax.training import compiled  # pylint: disable=g-import-not-at-top
  from tljax.data import inputs  # pylint: disable=g-import-not-at-top
  from tljax.training import pretrain  # pylint: disable=g-import-not-at-top
  c = config(str(tmp_path / 'cache_multi'))
  model = compiled.model_for(c, 5)
  variables = compiled.init_variables(model, c, jax.random.key(7))
  where = pretrain.path(c, inputs.data_identity(c)['source'])
  pretrain._save(where, variables, {'source': 'test'})  # pylint: disable=protected-access
  shutil.copytree(tmp_path / 'cache_multi', tmp_path / 'cache_ref')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(tmp, name, n, pid, port, devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
      [sys.executable, '-c', SCRIPT, ROOT, str(tmp / name), str(tmp / f'cache_{name}'), str(n),
       str(pid), str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _numbers(run):
  """Every number a run reports, timings left out."""
  return {k: v for k, v in run.items() if isinstance(v, (int, float)) and not k.endswith('_s')
          and 'per_s' not in k}


def _metrics(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def _run(procs):
  """Waits for `procs`; each must succeed."""
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]


def test_two_processes_write_once_and_match_one_process_with_two_devices(tmp_path):
  _pretrained_cache(tmp_path)
  port = _free_port()
  _run([_start(tmp_path, 'multi', 2, pid, port, 1) for pid in (0, 1)]
       + [_start(tmp_path, 'ref', 1, 0, 0, 2)])  # the reference: one process, two devices
  multi, ref = (json.loads((tmp_path / w / 'summary.json').read_text()) for w in ('multi', 'ref'))
  assert multi['environment']['device_count'] == ref['environment']['device_count'] == 2
  assert multi['pretraining']['0']['cached'] and multi['runs'][0]['train_memory']['devices'] == 2
  for a, b in zip(multi['runs'], ref['runs'], strict=True):
    assert _numbers(a) == _numbers(b)  # accuracy, loss, every FLOP, energy and memory field
  lines = _metrics(tmp_path / 'multi' / 'metrics.jsonl')
  assert [(l['run'], l['step'], l['train_loss']) for l in lines] == [
      (l['run'], l['step'], l['train_loss']) for l in _metrics(tmp_path / 'ref' / 'metrics.jsonl')]
  # Process 0 wrote every file, each record once; process 1 wrote nothing; nothing is left over.
  assert (tmp_path / 'multi.writes_1.txt').read_text() == ''
  writes = collections.Counter((tmp_path / 'multi.writes_0.txt').read_text().splitlines())
  assert writes['metrics'] == len(lines) == 3
  assert [n for p, n in writes.items() if '/cases/' in p] == [1]
  assert {os.path.basename(p) for p in writes} >= {'summary.json', 'config.json', 'data.json'}
  assert not [str(p) for p in tmp_path.rglob('*') if '.tmp' in p.name]
  assert [p.name for p in (tmp_path / 'multi').glob('.tljax.lock*')] == ['.tljax.lock']
  assert os.listdir(tmp_path / 'multi' / 'checkpoints') == []  # run finished: none left
  # On a rerun every process finds the records finished: one fingerprint for all processes,
  # whatever the coordinator's port (checked by hand with launch.py: a SIGTERM to process 1
  # alone stops both at the same step; the rerun on another port resumes and equals an
  # uninterrupted run).
  fps = {fingerprints.run_fingerprint(config('c', 2, pid, port), {}) for pid in (0, 1)}
  assert fps == {fingerprints.run_fingerprint(config('c', 2, 0, port + 1), {})}


def test_only_process_0_converts_the_imagenet_weights(monkeypatch):
  """Every process of a multi-host run reaches the same barrier; process 0 alone writes the
  converted weights into the shared cache."""
  from tljax.models import imagenet  # pylint: disable=g-import-not-at-top
  from tljax.runtime import parallel  # pylint: disable=g-import-not-at-top
  from tljax.sweep import runner  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  c.model, c.pretrained = 'efficientnet_b0', 'imagenet'
  for writer, calls in ((True, 1), (False, 0)):
    converted, barriers = [], []
    monkeypatch.setattr(parallel, 'multi_process', lambda: True)
    monkeypatch.setattr(parallel, 'is_writer', lambda w=writer: w)
    monkeypatch.setattr(parallel, 'barrier', lambda what, ok=True: barriers.append(what))
    monkeypatch.setattr(imagenet, 'ensure_converted', lambda *a: converted.append(a))
    runner.convert_imagenet(c)
    assert len(converted) == calls and barriers == ['converting the ImageNet weights']
