"""What one job runs: a seed's pretraining, a (case, seed) run, or the gather of the outputs."""

import json
import os
import signal
import sys
import time

from absl import logging
import submitit

from tljax.cluster import jobs as jobs_lib
from tljax.runtime import errors
from tljax.runtime import interrupt
from tljax.runtime import report
from tljax.sweep import layout
from tljax.sweep import locks
from tljax.sweep import outputs
from tljax.sweep import runner
from tljax.training import case as case_lib
from tljax.training import checkpoints
from tljax.training import pretrain

LOCK_WAIT_S = 600  # how long the gather job waits for a workdir held by a launcher
Task = jobs_lib.Task


class NothingToGather(ValueError):
  """No run of the sweep has finished."""


def needs_pretraining(rc, identity):
  return rc.pretrained == 'source' and not rc.dry_run and not pretrain.is_cached(rc, identity)


class Job(submitit.helpers.Checkpointable):
  """One job of a launch (a Task). At its time limit submitit signals USR2: the job checkpoints
  at the next step, and submitit requeues it (checkpoint() resubmits the same Job, which resumes
  from tljax's checkpoint) at most config.job_retries times; SIGTERM (preemption, scancel)
  checkpoints and ends it."""

  def __init__(self, config, workdir, task, facts, submitted_at=None):
    self.config, self.workdir, self.task, self.facts = config, workdir, task, facts
    self.submitted_at = submitted_at
    self.cwd = os.getcwd()  # relative paths in the config mean what they meant at launch

  def __call__(self):
    os.chdir(self.cwd)
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    interrupt.install()
    signal.signal(signal.SIGUSR2, lambda signum, frame: interrupt.request(signum))
    try:
      return {'pretrain': _pretrain_job, 'case': _case_job, 'gather': _gather_job}[
          self.task.kind](self)
    except interrupt.Interrupted as e:
      logging.warning('Job of %s stopped by %s (%s).', self.task.run,
                      signal.Signals(e.signum).name, e.detail)
      if e.signum == signal.SIGUSR2 and callable(submitit_handler):
        signal.signal(signal.SIGUSR2, submitit_handler)  # submitit: checkpoint() and requeue
        signal.raise_signal(signal.SIGUSR2)
      sys.exit(e.exit_code)
    except errors.USER_ERRORS as e:  # the launcher resubmits none that would fail the same way
      if not errors.is_final(e):
        raise
      raise errors.FinalJobError(f'{type(e).__name__}: {e}') from e


def _open(job):
  """The sweep as a job sees it: the workdir as the launcher prepared it, data loaded."""
  return runner.Sweep(job.config, job.workdir, prepare=False)


def _job_metrics(workdir, run):
  """metrics/<run>.jsonl, cut back to the run's checkpoint (lines after it are written again)."""
  path = layout.job_metrics_path(workdir, run)
  d = layout.case_dir(workdir, run)
  step = checkpoints.Checkpoints(d).latest_step() if os.path.isdir(d) else None
  layout.filter_metrics(path, {run}, {} if step is None else {run: step})
  return report.MetricsWriter(path)


def _write_info(sw, job, eval_compile_s, pretraining):
  report.write_json(layout.job_info_path(sw.workdir, job.task.run), dict(
      run=job.task.run, fingerprint=sw.fingerprint, eval_compile_s=eval_compile_s,
      pretraining=pretraining, environment=runner.environment(sw.config),
      job_id=os.environ.get('SLURM_JOB_ID') or os.environ.get('SUBMITIT_LOCAL_JOB_ID')))


def _pretrain_job(job):
  """Pretrains one seed into the cache (pretrain.variables)."""
  sw = _open(job)
  rc = runner.seed_config(sw.run_config, job.task.seed)
  with locks.run_lock(job.workdir, job.task.run):
    metrics = _job_metrics(job.workdir, job.task.run)
    try:
      _, info = pretrain.variables(rc, metrics, job.workdir, sw.identity, sw.mesh)
    finally:
      metrics.close()
  _write_info(sw, job, None, info)
  return f'{job.task.run}: pretrained'


def _case_job(job):
  """Trains one (case, seed) run into the workdir: its record, checkpoints, metrics, info."""
  sw = _open(job)
  name, seed = job.task.case, job.task.seed
  rc = runner.seed_config(sw.run_config, seed)
  if needs_pretraining(rc, sw.identity):
    raise ValueError(f'The pretraining that seed {seed} starts from is not in the cache '
                     f'({pretrain.path(rc, sw.identity["source"])}): its job did not finish. '
                     f'python -m tljax.status --workdir={job.workdir} shows it; rerun the launch.')
  with locks.run_lock(job.workdir, job.task.run):  # waits for a live job of the run
    sw.done[(name, seed)] = sw.load((name, seed))
    if sw.done[(name, seed)] is not None:
      return f'{job.task.run}: finished earlier'
    spec = next(s for s in sw.specs if s.name == name)
    plans = runner.plan_cases(sw, [spec], seed)
    metrics = _job_metrics(job.workdir, job.task.run)
    try:
      pretrained, info = pretrain.variables(rc, metrics, job.workdir, sw.identity, sw.mesh)
      plan = plans[name]  # its programs compiled while it pretrained
      rec = runner.train_run(sw, plan, spec, seed, pretrained, metrics)
    finally:
      plans.close()  # no compiling thread outlives the job
      metrics.close()
  _write_info(sw, job, plan.eval_compile_s, info)
  return f'{job.task.run}: {rec["status"]}, test accuracy {rec["test_accuracy"]}'


def _gather_job(job):
  """The last job of a launch that did not wait: the outputs, once the workdir is free."""
  deadline = time.time() + LOCK_WAIT_S
  while True:
    try:
      with locks.held(job.workdir, job.config.process_id):
        summary = gather(job.config, job.workdir, job.facts, time.time() - job.submitted_at)
      return f'{len(summary["runs"])} runs gathered into {job.workdir}'
    except locks.WorkdirLockedError:
      if time.time() > deadline:
        raise
      time.sleep(10)


def gather(config, workdir, facts, wall_s, failed=None):
  """Writes the outputs (outputs.write) from the runs' records, the jobs' info files and metrics
  files on disk; returns the summary. `facts`: runner.Sweep.facts of the launch; `failed`:
  {case, seed, reason} of the runs that failed for good (None: the runs without a record whose
  latest job in jobs.json has ended)."""
  fp, seeds = facts['fingerprint'], facts['seeds']
  keys = [(n, s) for n in facts['cases'] for s in seeds]  # case-major, as the inline sweep
  records = [layout.load_done(workdir, k, facts['run_fingerprints'][k]) for k in
             (case_lib.run_key(n, s) for n, s in keys)]
  runs = [r for r in records if r is not None]
  if not runs:
    raise NothingToGather(f'No run of this sweep has finished in {workdir}: nothing to gather; '
                          f'python -m tljax.status --workdir={workdir} shows its jobs.')
  if failed is None:
    failed = jobs_lib.ended_without_record(jobs_lib.Book(workdir), {
        case_lib.run_key(n, s): (n, s) for (n, s), r in zip(keys, records) if r is None})
  infos = [i for i in (jobs_lib.read_info(workdir, case_lib.run_key(n, s), fp) for n, s in keys)
           if i is not None]
  summary = runner.new_summary(
      config, facts, max((i['eval_compile_s'] for i in infos), default=None),
      env=next((i['environment'] for i in infos), None))
  for seed in seeds:
    pre = jobs_lib.read_info(workdir, Task('pretrain', seed).run, fp) or next(
        (i for i in infos if i['run'].endswith(f'_seed{seed}')), None)
    if pre is not None and pre.get('pretraining') is not None:
      summary['pretraining'][str(seed)] = pre['pretraining']
  merge_metrics(workdir, facts)
  outputs.finish(summary, runs, failed)
  summary['wall_s'] = wall_s
  outputs.write(workdir, summary)
  return summary


def merge_metrics(workdir, facts):
  """metrics.jsonl from each run's metrics/<run>.jsonl, in the inline sweep's order (per seed:
  its pretraining, then its cases); a run without its own file keeps its lines of the old
  metrics.jsonl (an inline run's)."""
  path = layout.file_path(workdir, layout.METRICS)
  old = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        try:
          old.setdefault(json.loads(line).get('run'), []).append(line.rstrip('\n') + '\n')
        except (ValueError, AttributeError):
          continue
  out = []
  for seed in facts['seeds']:
    for run in [Task('pretrain', seed).run] + [case_lib.run_key(n, seed) for n in facts['cases']]:
      own = layout.job_metrics_path(workdir, run)
      if os.path.exists(own):
        with open(own, encoding='utf-8') as f:
          out += [l if l.endswith('\n') else l + '\n' for l in f if l.strip()]
      else:
        out += old.get(run, [])
      old.pop(run, None)
  for lines in old.values():  # runs this sweep does not plan (a case removed): kept
    out += lines
  report.atomic_write_bytes(path, ''.join(out).encode())
