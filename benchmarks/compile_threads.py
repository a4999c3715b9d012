"""Compile-pool benchmark: a config's train steps compiled one after another, then on threads.

  python -m benchmarks.compile_threads [--config=configs/families.py] [--workers=2,1,2,1]
      [--cores=all|N] [--out=FILE.json]

It plans every case of the config's dry run (tljax.training.compile_pool.plan_cases, the sweep's
own path: train steps first, then eval, prefix and device-memory programs) with the persistent
compilation cache off, once per `--workers` value, and prints a table: the compile wall, the
seconds the programs' compiles summed to, the process's CPU seconds and CPU / wall. A pool helps
only where one XLA compile leaves cores idle; on 2 cores XLA:CPU (jaxlib 0.10) already keeps
about 1.8 busy with one program (benchmarks/README.md "The compile pool").
"""

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time

from tljax.sweep import runner
from tljax.training import compile_pool


def _config(path, workers, cache_dir):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.dry_run, c.compilation_cache, c.compile_workers = True, False, workers
  c.cache_dir, c.progress = cache_dir, False
  return c


def _cpu_s():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def measure(path, workers, tmp):
  """One planning of every case at `workers` threads: a row of the table."""
  config = _config(path, workers, os.path.join(tmp, 'cache'))
  sw = runner.Sweep(config, os.path.join(tmp, f'w{workers}'))
  t, cpu = time.perf_counter(), _cpu_s()
  plans = runner.plan_cases(sw, sw.specs, sw.seeds[0])
  try:
    for name in plans:  # every case's programs, the counting twins' included
      plans[name].counted()
    wall, cpu = time.perf_counter() - t, _cpu_s() - cpu
    report = plans.report()
  finally:
    plans.close()
  return dict(workers=compile_pool.workers(config),
              programs=len(report['programs']), wall_s=wall, compile_s=report['total_s'],
              cpu_s=cpu, cpu_per_wall=cpu / wall)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/families.py')
  p.add_argument('--workers', default='2,1,2,1', help='comma-separated compile_workers values '
                 '(the first planning in a process also warms it: alternate them)')
  p.add_argument('--cores', default='all', help="'all' or N: pin the process to its first N cores")
  p.add_argument('--out', default='')
  a = p.parse_args(argv)
  if a.cores != 'all':
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(a.cores)])
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for w in [int(x) for x in a.workers.split(',')]:
      rows.append(measure(a.config, w, tmp))
      print(f'workers={w}: {rows[-1]["wall_s"]:.1f} s', file=sys.stderr)
  cores = len(os.sched_getaffinity(0))
  print(f'{a.config}, {cores} cores, {rows[0]["programs"]} programs, compilation cache off')
  print('| threads | compile wall s | compiles summed s | process CPU s | CPU / wall | x serial |')
  print('|---|---|---|---|---|---|')
  serial = [r['wall_s'] for r in rows if r['workers'] == 1] or [rows[0]['wall_s']]
  for r in rows:  # x serial: against the mean of the one-thread rows
    print(f"| {r['workers']} | {r['wall_s']:.1f} | {r['compile_s']:.1f} | {r['cpu_s']:.1f} | "
          f"{r['cpu_per_wall']:.2f} | {r['wall_s'] / (sum(serial) / len(serial)):.2f} |")
  if a.out:
    with open(a.out, 'w') as f:
      json.dump(dict(config=a.config, cores=cores, rows=rows), f, indent=1)


if __name__ == '__main__':
  main()
