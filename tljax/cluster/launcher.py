"""Sweeps as submitit jobs: one per seed's pretraining, one per (case, seed), then the gather."""

import dataclasses
import os
import shutil
import signal
import time
from typing import Any

from absl import logging
import submitit

from tljax.cluster import executors
from tljax.cluster import job as job_lib
from tljax.cluster import jobs as jobs_lib
from tljax.runtime import errors
from tljax.runtime import interrupt
from tljax.sweep import layout
from tljax.sweep import locks
from tljax.sweep import runner
from tljax.training import pretrain

POLL_S = 1.0
STOP_WAIT_S = 300  # after Ctrl-C, how long local jobs get to checkpoint and end
SLURM_COMMANDS = ('sbatch', 'srun', 'sacct', 'scancel')


class JobsFailedError(errors.UserError):
  """Jobs failed after their retries; the summary holds the runs that finished."""


def launch(config, workdir):
  """Runs the sweep of `config` as jobs (config.launcher 'local' or 'slurm'); with
  config.launcher_wait, waits for them and returns the summary, else returns None once
  submitted. The workdir is locked while this process prepares, submits and gathers; each job
  writes only its own run's record, checkpoints, metrics/<run>.jsonl and job_info/<run>.json."""
  t0 = time.time()
  missing = [c for c in SLURM_COMMANDS if config.launcher == 'slurm' and not shutil.which(c)]
  if missing:
    raise OSError(f"config.launcher='slurm' needs SLURM's commands on PATH, which lacks "
                  f"{', '.join(missing)}: launch from a SLURM login node, or use "
                  "config.launcher='local' (jobs on this machine) or 'inline'.")
  _host_on_cpu()
  with locks.held(workdir, config.process_id):
    interrupt.check('before starting')
    sw = runner.Sweep(config, workdir)
    logging.info('%s', sw.plan_line())
    book = jobs_lib.Book(workdir)
    launcher = _Launcher(config, workdir, book, sw.facts())
    launcher.adopt(book)
    tasks = _tasks(sw, set(launcher.entries))
    _fetch_inputs(sw, tasks)
    if not tasks and not launcher.entries:
      logging.info('Every run is finished: gathering the summary.')
    elif not config.launcher_wait:
      return launcher.submit_all(tasks)
    launcher.run(tasks)
    try:
      summary = job_lib.gather(config, workdir, sw.facts(), time.time() - t0, failed=[
          dict(case=s.task.case, seed=s.task.seed, reason=s.reason)
          for s in launcher.failed() if s.task.kind == 'case'])
    except job_lib.NothingToGather:
      if not launcher.failed():
        raise
      summary = None
  launcher.raise_failures(summary)
  return summary


def _host_on_cpu():
  """The launching process computes nothing: it keeps off the GPU, which its jobs need."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if not xla_bridge.backends_are_initialized():
    jax.config.update('jax_platforms', 'cpu')


def _tasks(sw, busy):
  """The jobs to submit: per seed with unfinished runs, the pretraining it starts from when not
  cached (one job for the seeds that share it), then its unfinished (case, seed) runs; runs in
  `busy` (jobs of an earlier launch still running) are left to those jobs."""
  tasks = []
  for seed in sw.seeds:
    todo = [jobs_lib.Task('case', seed, s.name) for s in sw.todo(seed)]
    pre = jobs_lib.Task('pretrain', pretrain.source_seed(sw.run_config, seed))
    if (todo and pre not in tasks and
        job_lib.needs_pretraining(runner.seed_config(sw.run_config, seed), sw.identity)):
      tasks.append(pre)
    tasks += todo
  return [t for t in tasks if t.run not in busy]


def _fetch_inputs(sw, tasks):
  """What the jobs would otherwise each download: ImageNet weights, the source dataset."""
  if not tasks or sw.config.dry_run:
    return
  if sw.config.pretrained == 'imagenet':
    from tljax.models import imagenet  # pylint: disable=g-import-not-at-top
    imagenet.imagenet_variables(sw.config.model, sw.config.cache_dir,
                                **imagenet.config_fields(sw.config))
  if any(t.kind == 'pretrain' for t in tasks):
    from tljax.data import inputs  # pylint: disable=g-import-not-at-top
    for split in ('train', 'test'):
      inputs.load(sw.run_config, 'source', split)


@dataclasses.dataclass
class _Slot:
  """A task in this launch: its latest job entry (jobs.json), the submitit job, attempts."""
  task: jobs_lib.Task
  entry: Any = None
  live: Any = None
  attempts: int = 0
  status: str = 'pending'  # 'pending', 'submitted', 'done', 'failed'
  reason: str = ''
  gpu: Any = None


class _Launcher:
  """Submits tasks as submitit jobs, tracks them, retries failures, stops them on Ctrl-C."""

  def __init__(self, config, workdir, book, facts):
    self.config, self.workdir, self.book, self.facts = config, workdir, book, facts
    self.cluster = config.launcher
    stamp = time.strftime('%Y%m%d-%H%M%S') + f'-{os.getpid()}'
    self.folder = layout.submitit_dir(workdir, stamp)
    self.slots = {}  # run -> _Slot
    self.submitted = []  # the jobs.json entries of this launch's jobs, in submission order
    self.entries = {}  # runs of earlier launches still running: run -> entry
    self.gpus = executors.gpu_count() if self.cluster == 'local' else 0
    self._executor = None

  def executor(self):
    if self._executor is None:
      if self.cluster == 'local':
        self._executor = executors.LocalExecutor(self.folder, max_num_timeout=self.config.job_retries)
      else:
        self._executor = submitit.SlurmExecutor(self.folder,
                                                max_num_timeout=self.config.job_retries)
    return self._executor

  def adopt(self, book):
    """Jobs of an earlier launch that still run: their runs are theirs; this launch waits for
    them (and retries them if they fail)."""
    latest = [e for e in book.latest().values() if e['kind'] != 'gather']
    for e, st in zip(latest, jobs_lib.states(latest)):
      run = e['run']
      if jobs_lib.is_active(e, st):
        t = jobs_lib.Task(e['kind'], e['seed'], e['case'])
        self.entries[run] = e
        self.slots[run] = _Slot(t, entry=e, attempts=e.get('attempt', 0), status='submitted')
        logging.info('Run %s is in job %s of an earlier launch (still running): waiting for it.',
                     run, e['job_id'])

  def _pretrain_slot(self, seed):
    """The slot of the pretraining that the runs of `seed` start from."""
    return self.slots.get(jobs_lib.Task('pretrain', pretrain.source_seed(self.config, seed)).run)

  def _ready(self, slot):
    """(ready, dependency job id or None) of a pending slot; marks it failed when its seed's
    pretraining failed for good."""
    if slot.task.kind != 'case':
      return True, None
    pre = self._pretrain_slot(slot.task.seed)
    if pre is None or pre.status == 'done':
      return True, None
    if pre.status == 'failed':
      slot.status, slot.reason = 'failed', f'its pretraining ({pre.task.run}) failed'
      return False, None
    if pre.status == 'submitted' and self.cluster == 'slurm':
      return True, pre.entry['job_id']
    return False, None

  def _submit(self, slots, dependency=None):
    """Submits `slots` (one SLURM array when several), recording each job in jobs.json."""
    ex = self.executor()
    for s in slots:
      s.gpu = self._free_gpu(s) if self.cluster == 'local' else None
    if self.cluster == 'slurm':
      ex.update_parameters(**executors.slurm_parameters(
          self.config, slots[0].task, dependency and f'afterok:{dependency}'))
    jobs = []
    try:
      with ex.batch() if len(slots) > 1 and self.cluster == 'slurm' else executors.nothing():
        for s in slots:
          if self.cluster == 'local':
            ex.update_parameters(**self._local_parameters(s.gpu))
          jobs.append(ex.submit(job_lib.Job(self.config, self.workdir, s.task, self.facts)))
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError,
            OSError) as e:
      raise OSError(f'Submitting {len(slots)} job(s) to {self.cluster} failed: {e}') from e
    for s, job in zip(slots, jobs):
      s.live, s.status = job, 'submitted'
      s.entry = self.book.add(s.task, job.job_id, self.cluster, self.folder, s.attempts,
                              dependency)
      self.submitted.append(s.entry)
    self.book.save(launcher=self.cluster, facts=self.facts)
    return jobs

  def _local_parameters(self, gpu):
    """The job's GPU (or none), and its environment: tljax importable; when jobs share a GPU,
    each allocates what it uses instead of XLA's 75 %."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {'PYTHONPATH': os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))}
    if self.gpus and self.config.max_parallel_jobs > self.gpus:
      env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
    self.executor().env = env
    return dict(timeout_min=executors.LOCAL_TIMEOUT_MIN, gpus_per_node=0 if gpu is None else 1,
                visible_gpus=() if gpu is None else (gpu,))

  def _free_gpu(self, slot):
    """The GPU a local job runs on: the least used one (None without GPUs)."""
    if not self.gpus:
      return None
    used = [s.gpu for s in self.slots.values() if s.status == 'submitted' and s is not slot]
    return min(range(self.gpus), key=used.count)

  def submit_all(self, tasks):
    """Submits every task at once (SLURM dependencies order them), then the gather job that
    writes the outputs once they have all ended; returns None."""
    for t in tasks:
      self.slots[t.run] = _Slot(t)
    self._submit_ready(limit=None)
    waits = [e['job_id'].split('_')[0] for e in self.submitted]
    waits += [e['job_id'].split('_')[0] for e in self.entries.values()]
    dep = f'afterany:{":".join(dict.fromkeys(waits))}' if waits else None
    ex = self.executor()
    ex.update_parameters(**executors.slurm_parameters(self.config, jobs_lib.Task('gather'), dep))
    job = ex.submit(job_lib.Job(self.config, self.workdir, jobs_lib.Task('gather'), self.facts, time.time()))
    self.book.add(jobs_lib.Task('gather'), job.job_id, self.cluster, self.folder, depends_on=dep)
    self.book.save(launcher=self.cluster, facts=self.facts)
    n_pre = sum(t.kind == 'pretrain' for t in tasks)
    print(f'Submitted {n_pre} pretraining job(s), {len(tasks) - n_pre} case job(s) and the '
          f'gather job {job.job_id} to SLURM (their ids are in {self.book.path}). '
          f'python -m tljax.status --workdir={self.workdir} shows their states; the gather job '
          'writes the summary when they have ended.')
    return None

  def _submit_ready(self, limit):
    """Submits the pending slots that may start: pretraining first, then cases (local: up to
    `limit` running jobs; SLURM: grouped by dependency into arrays)."""
    for kind in ('pretrain', 'case'):
      groups = {}
      for s in [s for s in self.slots.values() if s.status == 'pending' and s.task.kind == kind]:
        ok, dep = self._ready(s)
        if not ok:
          continue
        if limit is None:  # SLURM: a job per pretraining, an array per seed's cases
          groups.setdefault(dep if kind == 'case' else s.task.run, []).append(s)
        elif sum(x.status == 'submitted' for x in self.slots.values()) < limit:
          self._submit([s])
      for key, slots in groups.items():
        self._submit(slots, key if kind == 'case' else None)

  def run(self, tasks):
    """Submits `tasks` and waits until every job of this launch has ended, retrying a failed
    job up to config.job_retries times."""
    for t in tasks:
      self.slots[t.run] = _Slot(t)
    limit = self.config.max_parallel_jobs if self.cluster == 'local' else None
    try:
      while any(s.status in ('pending', 'submitted') for s in self.slots.values()):
        interrupt.check('while waiting for the jobs')
        self._submit_ready(limit)
        self._poll()
        time.sleep(POLL_S)
    except interrupt.Interrupted as e:
      raise interrupt.Interrupted(e.signum, self._stop()) from None

  def _poll(self):
    for s in self.slots.values():
      if s.status != 'submitted':
        continue
      st = jobs_lib.state(s.entry, s.live)
      if jobs_lib.is_active(s.entry, st):
        continue
      if st == 'COMPLETED':
        s.status = 'done'
        continue
      self._ended_badly(s, st)

  def _ended_badly(self, s, st):
    pre = self._pretrain_slot(s.task.seed) if s.task.kind == 'case' else None
    if pre is not None and pre.status in ('pending', 'failed'):  # its dependency failed
      s.status = 'pending'
      return
    line = jobs_lib.error_line(s.entry)
    why = f'job {s.entry["job_id"]} {st}: {line}'
    final = errors.final_line(line)
    if final is not None:
      why = f'job {s.entry["job_id"]} {st}: {final}'
    if s.attempts < self.config.job_retries and final is None:
      logging.warning('Run %s: %s; resubmitting it (retry %d of %d).', s.task.run, why,
                      s.attempts + 1, self.config.job_retries)
      s.attempts += 1
      s.status = 'pending'
    else:
      s.status, s.reason = 'failed', why

  def _stop(self):
    """After Ctrl-C/SIGTERM: local jobs get SIGTERM (they checkpoint and end); SLURM jobs keep
    running. Returns what happened, for the one-line message."""
    running = [s for s in self.slots.values() if s.status == 'submitted']
    if self.cluster == 'slurm':
      return (f'{len(running)} SLURM job(s) keep running; python -m tljax.status '
              f'--workdir={self.workdir} lists them, and the same command waits for them and '
              'writes the summary')
    for s in running:
      try:
        os.kill(int(s.entry['job_id']), signal.SIGTERM)  # the controller forwards it to the job
      except (OSError, ValueError):
        pass
    deadline = time.time() + STOP_WAIT_S
    while time.time() < deadline and any(
        jobs_lib.is_active(s.entry, jobs_lib.state(s.entry, s.live)) for s in running):
      time.sleep(0.2)
    states = [jobs_lib.state(s.entry, s.live) for s in running]
    return (f'{states.count("INTERRUPTED")} local job(s) stopped with a checkpoint, '
            f'{states.count("COMPLETED")} finished, {states.count("RUNNING")} still running')

  def failed(self):
    return [s for s in self.slots.values() if s.status == 'failed']

  def raise_failures(self, summary):
    failed = self.failed()
    if failed:
      lines = '; '.join(f'{s.task.run}: {s.reason}' for s in failed)
      kept = (f'the summary in {self.workdir} holds the {len(summary["runs"])} finished run(s)'
              if summary else 'no run finished')
      raise JobsFailedError(
          f'{len(failed)} job(s) failed ({lines}); {kept}. python -m tljax.status '
          f'--workdir={self.workdir} shows their logs; rerun the same command to retry them.')
