"""Train-step speed per freeze case: tljax against PyTorch and Keras-TensorFlow on the same CPU."""

import argparse
import datetime
import functools
import importlib.util
import json
import os
import sys
import time

import numpy as np

from benchmarks import tables
from benchmarks import timing as timing_lib

# The six small-CNN cases (Figure 3.1) and the EfficientNet cases of the benchmark.
SMALL_CASES = (1, 4, 9, 11, 17, 23)
B0_TOP = 3  # top_conv, top_bn, top_activation
PEERS = ('torch', 'keras_tf')
PEER_MODULES = {'torch': ('torch',), 'keras_tf': ('keras', 'tensorflow')}

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
# On a GPU a step takes milliseconds: more steps per timing, the same for every model.
GPU_TIMING = dict(number=20, repeat=5, warmup=3)


# ---------------------------------------------------------------------------------------------
# Benchmark specs.


def model_specs(quick, models=('small_cnn', 'efficientnet_b0'), depthwise=None,
                b0_batch_sizes=(32,), gpu=False):
  """What to time per model: config fields, cases, timing, input source (EfficientNet once per
  batch size in `b0_batch_sizes`)."""
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
    for batch_size in b0_batch_sizes:
      specs.append(dict(model='efficientnet_b0', image_size=224, channels=3,
                        batch_size=batch_size, num_classes=100, counting='base', cases=cases,
                        n_base=n_base, impls=impls, timing=TIMING[mode]['efficientnet_b0'],
                        grouped_timing=TIMING[mode]['grouped'], input='uint8_32'))
  for s in specs:
    s['input_timing'] = TIMING[mode]['input']
    if gpu:
      s['timing'] = s['grouped_timing'] = dict(GPU_TIMING)
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
  return {0: 'head', spec.get('top', B0_TOP): 'top', spec['n_base']: 'all'}.get(n, str(n))


def config_for(spec):
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
  c.update(spec.get('fields', {}))
  return c


def random_batch(spec, seed=0):
  """Random images (uint8 range for EfficientNet, [0, 1] otherwise) and labels, NHWC float32."""
  rng = np.random.default_rng(seed)
  shape = (spec['batch_size'], spec['image_size'], spec['image_size'], spec['channels'])
  scale = 1.0 if spec['model'] == 'small_cnn' else 255.0
  x = (rng.uniform(size=shape) * scale).astype(np.float32)
  y = rng.integers(0, spec['num_classes'], spec['batch_size']).astype(np.int32)
  return x, y


# ---------------------------------------------------------------------------------------------
# tljax.


def time_tljax_case(spec, n, impl=None, timing=None, wait_idle=0.0, log=print):
  """Compiles case `n` with compiled.compile_steps and times its train step."""
  import jax  # pylint: disable=g-import-not-at-top
  from tljax.accounting import costs  # pylint: disable=g-import-not-at-top
  from tljax.training import case as case_lib  # pylint: disable=g-import-not-at-top
  from tljax.training import compiled  # pylint: disable=g-import-not-at-top
  config = config_for(spec)
  timing = timing or spec['timing']
  case = case_lib.make_case(config, n, spec['num_classes'])
  model = case.model if impl is None else case.model.clone(depthwise_impl=impl)
  from tljax.runtime import parallel  # pylint: disable=g-import-not-at-top
  steps = compiled.compile_steps(model, case.tx, case.trainable, case.state, config,
                                 eval_batch=spec['batch_size'])
  train_c, compile_s, cost = steps.train, steps.compile_s, steps.train_cost
  twin = costs.counting_model(model)
  # The FLOPs as counted, whichever step runs (docs/accounting.md "FLOPs per backend").
  if twin is not None:
    twin_steps = compiled.compile_steps(twin, case.tx, case.trainable, case.state, config,
                                        eval_batch=spec['batch_size'],
                                        mesh=parallel.Mesh.on(costs.counting_device()))
    cost = costs.with_counted_flops(cost, twin_steps.train_cost)
  x, y = random_batch(spec)
  x, y = jax.device_put(x), jax.device_put(y)
  holder = [case.state]

  def step():
    holder[0], _ = train_c(holder[0], x, y)
    return holder[0]

  waited = timing_lib.wait_for_idle(wait_idle, log=log)
  with timing_lib.CpuContention() as contention:
    step_s, samples = timing_lib.median_time(step, sync=jax.block_until_ready, **timing)
  flops = cost['flops']
  resolved = costs.depthwise_impls(model)[0] if impl is not None else None
  return dict(case=n, label=case_label(spec, n), depthwise_impl=resolved,
              trainable_layers=len(case.trainable_names), step_s=step_s, samples_s=samples,
              examples_per_s=spec['batch_size'] / step_s, train_flops_per_step=flops,
              gflops_per_s=flops / step_s / 1e9, compile_s=compile_s,
              memory_bytes=cost.get('memory_bytes'),
              timing=dict(timing), other_cpu_share=contention.result.get('other_cpu_share'),
              waited_for_idle_s=waited)


def time_input(spec, timing=None):
  """Examples/s of the input pipeline: datasets.train_batches + datasets.preprocess, one thread."""
  from tljax.data import datasets  # pylint: disable=g-import-not-at-top
  from tljax import models  # pylint: disable=g-import-not-at-top
  timing = timing or spec['input_timing']
  if importlib.util.find_spec('tensorflow') is None:  # digits' upsampling, the resize: TF's
    return dict(source='TensorFlow not installed', batch_size=spec['batch_size'], step_s=None,
                samples_s=[], examples_per_s=None, timing=dict(timing))
  if spec['input'] == 'digits':
    arrays = datasets.load('digits', 'train')
    source = 'digits train split (real, 32x32 float)'
    fit = datasets.fit_of('digits')
  else:
    rng = np.random.default_rng(0)
    n = 8 * spec['batch_size']
    arrays = datasets.Arrays(rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
                         rng.integers(0, spec['num_classes'], n).astype(np.int32),
                         spec['num_classes'], 'random', 'train')
    source = f'random uint8 32x32x3 (CIFAR-sized) resized to {spec["image_size"]}'
    fit = 'resize'
  prep = functools.partial(datasets.preprocess, image_size=spec['image_size'],
                           channels=spec['channels'], fit=fit,
                           pixel_scale=models.pixel_scale(spec['model']))

  def forever():
    epoch = 0
    while True:
      yield from datasets.train_batches(arrays, spec['batch_size'], seed=0, epoch=epoch, prep=prep)
      epoch += 1

  it = forever()
  step_s, samples = timing_lib.median_time(lambda: next(it), **timing)
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
  """Runs `python -m benchmarks.step --peer_job=...` in a subprocess; its JSON, or a skip note."""
  ok, note = peer_available(name)
  if not ok:
    return dict(available=False, note=note, cases=[])
  job = dict(peer=name, spec={k: v for k, v in spec.items() if k != 'timing'},
             cases=list(cases), timing=timing, wait_idle=wait_idle)
  result, note, contention = timing_lib.run_job('benchmarks.step', job, timeout=timeout)
  if result is None:
    return dict(available=False, note=note, cases=[])
  result.update(available=True, note=result.get('note', ''),
                other_cpu_share=contention.get('other_cpu_share'))
  return result


def _peer_main(job_path, out_path):
  """In the peer's process: times the job's cases in torch or Keras, writes the JSON."""
  with open(job_path) as f:
    job = json.load(f)
  spec = job['spec']
  cases = [(n, peer_case_kind(spec, n)) for n in job['cases']]
  cases = [(n, kind) for n, kind in cases if kind is not None]
  x, y = random_batch(spec)
  if job['peer'] == 'torch':
    from benchmarks import torch_peers  # pylint: disable=g-import-not-at-top
    result = torch_peers.step_peer(spec, cases, x, y, job['timing'], job.get('wait_idle', 0.0))
  else:
    from benchmarks import keras_peers  # pylint: disable=g-import-not-at-top
    result = keras_peers.step_peer(spec, cases, x, y, job['timing'], job.get('wait_idle', 0.0),
                                   top_layers=B0_TOP)
  with open(out_path, 'w') as f:
    json.dump(result, f)


def peer_case_kind(spec, n):
  """For EfficientNet peers: 'head', 'top' or 'all'; None if the peer cannot express case n."""
  if spec['counting'] != 'base':
    return n
  return {0: 'head', spec.get('top', B0_TOP): 'top', spec['n_base']: 'all'}.get(n)


# ---------------------------------------------------------------------------------------------
# The run, the table.


def bench_model(spec, peers=PEERS, log=print, wait_idle=0.0):
  """Every case of `spec`: tljax (per depthwise impl), the input pipeline, the peers.

  wait_idle: before each timing, wait up to this many seconds for other processes to go quiet.
  """
  with timing_lib.CpuContention() as contention:
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
  waited = timing_lib.wait_for_idle(wait_idle, log=log)
  inp = time_input(spec)
  inp['waited_for_idle_s'] = waited
  log(f'  input pipeline: {inp["examples_per_s"]:.0f} examples/s' if inp['step_s'] else
      f'  input pipeline: not timed ({inp["source"]})')
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


def run(quick=False, models=('small_cnn', 'efficientnet_b0'), peers=PEERS, depthwise=None,
        log=print, specs=None, wait_idle=0.0, xla_cpu_tuning=True, prefix=True,
        b0_batch_sizes=(32,), partial=None):
  """The whole benchmark: a JSON-able dict. `specs` replaces model_specs(...) when given.

  partial(result): called after each model with what is done so far (written to --out, so a run
  cut off by a time limit keeps its finished models).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from tljax.runtime import backend  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  gpu = jax.default_backend() == 'gpu'
  specs = specs or model_specs(quick, models, depthwise, b0_batch_sizes, gpu)
  for spec in specs:
    spec.setdefault('xla_cpu_tuning', xla_cpu_tuning)
  result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                quick=quick, machine=timing_lib.cpu_model(), versions=timing_lib.versions(),
                timing='median over repeat timings of number steps after warmup steps; '
                       'one host sync per timing',
                xla_compiler_options=backend.compiler_options(
                    config_for(specs[0]) if specs else None),
                models=[])
  for spec in specs:
    log(f'{spec["model"]}:')
    result['models'].append(bench_model(spec, peers, log, wait_idle))
    if prefix:
      from benchmarks import prefix as prefix_bench  # pylint: disable=g-import-not-at-top
      result['models'][-1]['prefix_cache'] = prefix_bench.bench(config_for(spec), spec, quick, log)
    if partial:
      partial(dict(result, partial=True))
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
  p.add_argument('--b0_batch_sizes', default='32',
                 help='Comma list: EfficientNetB0 is timed once per batch size (e.g. 32,128).')
  p.add_argument('--depthwise', default=None,
                 help='EfficientNet depthwise impls to time, e.g. auto,grouped.')
  p.add_argument('--wait_idle', type=float, default=0.0,
                 help='Before each timing wait up to this many seconds for other processes '
                 'to leave the CPU (shared machines).')
  p.add_argument('--no_prefix_cache', action='store_true',
                 help='Skip the end-to-end runs with and without the frozen-prefix cache.')
  p.add_argument('--no_xla_cpu_tuning', action='store_true',
                 help="Compile tljax's steps with XLA's default CPU options (tljax/runtime/backend.py), "
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
  result = run(args.quick, models, peers, depthwise, log=timing_lib.stderr, wait_idle=args.wait_idle,
               xla_cpu_tuning=not args.no_xla_cpu_tuning, prefix=not args.no_prefix_cache,
               b0_batch_sizes=tuple(int(b) for b in args.b0_batch_sizes.split(',') if b),
               partial=(lambda r: _write(args.out, r)) if args.out else None)
  print(f'tljax bench {result["date"]}, {result["machine"]["cpu"]}, '
        f'{result["machine"]["cores"]} cores, JAX device {result["versions"]["jax_device"]}; '
        + ', '.join(
            f'{k} {v}' for k, v in result['versions'].items()))
  print(f'tljax XLA compiler options: {result["xla_compiler_options"] or "XLA defaults"}')
  print(f'wall {result["wall_s"]:.0f} s, of which {result["waited_for_idle_s"]:.0f} s waiting '
        'for other processes to leave the CPU')
  for m in result['models']:
    print()
    print(tables.step_tables(m))
    if m.get('prefix_cache'):
      print()
      print(tables.prefix_table(m['prefix_cache']))
  if args.out:
    _write(args.out, result)
    print(f'\nwritten to {args.out}')


def _write(path, result):
  from tljax.runtime import report  # pylint: disable=g-import-not-at-top
  report.write_json(path, result)


if __name__ == '__main__':
  main()
