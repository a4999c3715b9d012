"""Sweeps as submitit jobs: one per seed's pretraining, one per (case, seed), then the gather."""

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from absl import logging
import submitit
from submitit.local import local as submitit_local

from tljax import case as case_lib
from tljax import interrupt
from tljax import jobs as jobs_lib
from tljax import outputs
from tljax import pretrain
from tljax import report
from tljax import resume
from tljax import sweep
from tljax import workdir_lock

LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit
GATHER_TIME_MIN = 30  # the final job of a launch that does not wait: reads records, writes outputs
POLL_S = 1.0
STOP_WAIT_S = 300  # after Ctrl-C, how long local jobs get to checkpoint and end
LOCK_WAIT_S = 600  # how long the gather job waits for a workdir held by a launcher
# A job that failed with one of these (tljax's one-line errors: config, data, memory) fails the
# same way again: it is not retried. Crashes, kills and other exceptions are.
USER_ERRORS = ('ValueError', 'MemoryError', 'FloatingPointError', 'DatasetUnavailableError',
               'WeightsUnavailableError', 'tljax.')
SLURM_COMMANDS = ('sbatch', 'srun', 'sacct', 'scancel')


class JobsFailedError(RuntimeError):
  """Jobs failed after their retries; the summary holds the runs that finished."""


class NothingToGather(ValueError):
  """No run of the sweep has finished."""


@dataclasses.dataclass(frozen=True)
class Task:
  """What one job does: 'pretrain' (a seed), 'case' (a case at a seed) or 'gather'."""
  kind: str
  seed: Any = None
  case: Any = None  # the case's canonical name (freezing.CaseSpec.name)

  @property
  def run(self):
    if self.kind == 'case':
      return case_lib.run_key(self.case, self.seed)
    return f'pretrain_seed{self.seed}' if self.kind == 'pretrain' else 'gather'


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
  with workdir_lock.held(workdir, config.process_id):
    interrupt.check('before starting')
    sw = sweep._Sweep(config, workdir)  # pylint: disable=protected-access
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
      summary = gather(config, workdir, sw.facts(), time.time() - t0)
    except NothingToGather:
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


def needs_pretraining(rc, identity):
  return rc.pretrained == 'source' and not rc.dry_run and not pretrain.is_cached(rc, identity)


def _tasks(sw, busy):
  """The jobs to submit: per seed with unfinished runs, its pretraining when not cached, then
  its unfinished (case, seed) runs; runs in `busy` (jobs of an earlier launch still running)
  are left to those jobs."""
  tasks = []
  for seed in sw.seeds:
    todo = [Task('case', seed, s.name) for s in sw.todo(seed)]
    if todo and needs_pretraining(sweep.seed_config(sw.run_config, seed), sw.identity):
      tasks.append(Task('pretrain', seed))
    tasks += todo
  return [t for t in tasks if t.run not in busy]


def _fetch_inputs(sw, tasks):
  """What the jobs would otherwise each download: ImageNet weights, the source dataset."""
  if not tasks or sw.config.dry_run:
    return
  if sw.config.pretrained == 'imagenet':
    from tljax import weights  # pylint: disable=g-import-not-at-top
    weights.imagenet_variables(sw.config.model, sw.config.cache_dir,
                               **weights.config_fields(sw.config))
  if any(t.kind == 'pretrain' for t in tasks):
    from tljax import inputs  # pylint: disable=g-import-not-at-top
    for split in ('train', 'test'):
      inputs.load(sw.run_config, 'source', split)


def slurm_extra(text):
  """sbatch options '--name=value --flag' as submitit's slurm_additional_parameters."""
  out = {}
  for word in shlex.split(text):
    name, eq, value = word[2:].partition('=')
    out[name.replace('-', '_')] = value if eq else True
  return out


def slurm_parameters(config, task, dependency=None):
  """SlurmExecutor parameters of `task`'s job (the gather gets no GPU and GATHER_TIME_MIN)."""
  extra = slurm_extra(config.slurm_extra)
  if dependency:
    extra['dependency'] = ','.join(filter(None, [extra.get('dependency'), dependency]))
    extra['kill_on_invalid_dep'] = 'yes'  # a failed pretraining cancels its seed's cases
  gather = task.kind == 'gather'
  params = dict(job_name=f'tljax-{config.name}-{task.kind}', additional_parameters=extra,
                time=min(GATHER_TIME_MIN, config.slurm_time_minutes) if gather
                else config.slurm_time_minutes,
                gpus_per_node=None if gather or not config.slurm_gpus_per_job
                else config.slurm_gpus_per_job, setup=_setup())
  if config.slurm_partition:
    params['partition'] = config.slurm_partition
  return params


def _setup(*lines):
  """Shell lines before each job: tljax importable whether or not it is installed."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return [f'export PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}', *lines]


class _LocalExecutor(submitit.LocalExecutor):
  """submitit's LocalExecutor, each job in its own session: a Ctrl-C at the launcher's terminal
  does not reach the jobs; the launcher stops them itself, with SIGTERM to the job's controller
  (its id; no `setup` shell in between), which forwards it, so they checkpoint. `env`: variables
  the job's processes get."""

  env = {}

  def _submit_command(self, command):
    old = {k: os.environ.get(k) for k in self.env}
    os.environ.update(self.env)
    submitit_local.subprocess = _NewSessions  # only submitit's start_controller reads it
    try:
      return super()._submit_command(command)
    finally:
      submitit_local.subprocess = subprocess
      for k, v in old.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


class _NewSessions:
  """The subprocess module, as submitit's local executor sees it during a submission."""

  @staticmethod
  def Popen(*args, **kwargs):  # pylint: disable=invalid-name
    return subprocess.Popen(*args, start_new_session=True, **kwargs)


def _gpu_count():
  if not shutil.which('nvidia-smi'):
    return 0
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(line.startswith('GPU ') for line in out.stdout.splitlines())


@dataclasses.dataclass
class _Slot:
  """A task in this launch: its latest job entry (jobs.json), the submitit job, attempts."""
  task: Task
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
    self.folder = os.path.join(os.path.abspath(workdir), 'submitit', stamp, '%j')
    self.slots = {}  # run -> _Slot
    self.submitted = []  # the jobs.json entries of this launch's jobs, in submission order
    self.entries = {}  # runs of earlier launches still running: run -> entry
    self.gpus = _gpu_count() if self.cluster == 'local' else 0
    self._executor = None

  def executor(self):
    if self._executor is None:
      if self.cluster == 'local':
        self._executor = _LocalExecutor(self.folder, max_num_timeout=self.config.job_retries)
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
        t = Task(e['kind'], e['seed'], e['case'])
        self.entries[run] = e
        self.slots[run] = _Slot(t, entry=e, attempts=e.get('attempt', 0), status='submitted')
        logging.info('Run %s is in job %s of an earlier launch (still running): waiting for it.',
                     run, e['job_id'])

  def _pretrain_slot(self, seed):
    return self.slots.get(Task('pretrain', seed).run)

  def _ready(self, slot):
    """(ready, dependency job id or None) of a pending slot; marks it failed when its seed's
    pretraining failed for good."""
    if slot.task.kind != 'case':
      return True, None
    pre = self._pretrain_slot(slot.task.seed)
    if pre is None or pre.status == 'done':
      return True, None
    if pre.status == 'failed':
      slot.status, slot.reason = 'failed', f'the pretraining of seed {slot.task.seed} failed'
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
      ex.update_parameters(**slurm_parameters(
          self.config, slots[0].task, dependency and f'afterok:{dependency}'))
    jobs = []
    try:
      with ex.batch() if len(slots) > 1 and self.cluster == 'slurm' else _nothing():
        for s in slots:
          if self.cluster == 'local':
            ex.update_parameters(**self._local_parameters(s.gpu))
          jobs.append(ex.submit(Job(self.config, self.workdir, s.task, self.facts)))
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
    return dict(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=0 if gpu is None else 1,
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
    ex.update_parameters(**slurm_parameters(self.config, Task('gather'), dep))
    job = ex.submit(Job(self.config, self.workdir, Task('gather'), self.facts, time.time()))
    self.book.add(Task('gather'), job.job_id, self.cluster, self.folder, depends_on=dep)
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
    if s.attempts < self.config.job_retries and not line.startswith(USER_ERRORS):
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


class _nothing:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


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


def _open(job):
  """The sweep as a job sees it: the workdir as the launcher prepared it, data loaded."""
  return sweep._Sweep(job.config, job.workdir, prepare=False)  # pylint: disable=protected-access


def _job_metrics(workdir, run):
  """metrics/<run>.jsonl, cut back to the run's checkpoint (lines after it are written again)."""
  path = jobs_lib.metrics_path(workdir, run)
  d = resume.case_dir(workdir, run)
  step = resume.Checkpoints(d).latest_step() if os.path.isdir(d) else None
  resume.filter_metrics(path, set(), {} if step is None else {run: step})
  return report.MetricsWriter(path)


def _write_info(sw, job, eval_compile_s, pretraining):
  report.write_json(jobs_lib.info_path(sw.workdir, job.task.run), dict(
      run=job.task.run, fingerprint=sw.fingerprint, eval_compile_s=eval_compile_s,
      pretraining=pretraining, environment=sweep.environment(sw.config),
      job_id=os.environ.get('SLURM_JOB_ID') or os.environ.get('SUBMITIT_LOCAL_JOB_ID')))


def _pretrain_job(job):
  """Pretrains one seed into the cache (pretrain.variables)."""
  sw = _open(job)
  rc = sweep.seed_config(sw.run_config, job.task.seed)
  with jobs_lib.run_lock(job.workdir, job.task.run):
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
  rc = sweep.seed_config(sw.run_config, seed)
  if needs_pretraining(rc, sw.identity):
    raise ValueError(f'The pretraining of seed {seed} is not in the cache '
                     f'({pretrain.path(rc, sw.identity["source"])}): its job did not finish. '
                     f'python -m tljax.status --workdir={job.workdir} shows it; rerun the launch.')
  with jobs_lib.run_lock(job.workdir, job.task.run):
    if sw.done[(name, seed)] is not None:
      return f'{job.task.run}: finished earlier'
    spec = next(s for s in sw.specs if s.name == name)
    plan = sweep.plan_cases(sw, [spec], seed)[name]
    metrics = _job_metrics(job.workdir, job.task.run)
    try:
      pretrained, info = pretrain.variables(rc, metrics, job.workdir, sw.identity, sw.mesh)
      rec = sweep.train_run(sw, plan, spec, seed, pretrained, metrics)
    finally:
      metrics.close()
  _write_info(sw, job, plan.eval_compile_s, info)
  return f'{job.task.run}: {rec["status"]}, test accuracy {rec["test_accuracy"]}'


def _gather_job(job):
  """The last job of a launch that did not wait: the outputs, once the workdir is free."""
  deadline = time.time() + LOCK_WAIT_S
  while True:
    try:
      with workdir_lock.held(job.workdir, job.config.process_id):
        summary = gather(job.config, job.workdir, job.facts, time.time() - job.submitted_at)
      return f'{len(summary["runs"])} runs gathered into {job.workdir}'
    except workdir_lock.WorkdirLockedError:
      if time.time() > deadline:
        raise
      time.sleep(10)


def gather(config, workdir, facts, wall_s):
  """Writes the outputs (outputs.write) from the runs' records, the jobs' info files and metrics
  files on disk; returns the summary. `facts`: sweep._Sweep.facts of the launch."""
  fp, seeds = facts['fingerprint'], facts['seeds']
  keys = [(n, s) for n in facts['cases'] for s in seeds]  # case-major, as the inline sweep
  runs = [r for r in (resume.load_done(workdir, case_lib.run_key(n, s), fp) for n, s in keys)
          if r is not None]
  if not runs:
    raise NothingToGather(f'No run of this sweep has finished in {workdir}: nothing to gather; '
                          f'python -m tljax.status --workdir={workdir} shows its jobs.')
  infos = [i for i in (jobs_lib.read_info(workdir, case_lib.run_key(n, s), fp) for n, s in keys)
           if i is not None]
  summary = sweep.new_summary(
      config, facts, max((i['eval_compile_s'] for i in infos), default=None),
      env=next((i['environment'] for i in infos), None))
  for seed in seeds:
    pre = jobs_lib.read_info(workdir, Task('pretrain', seed).run, fp) or next(
        (i for i in infos if i['run'].endswith(f'_seed{seed}')), None)
    if pre is not None and pre.get('pretraining') is not None:
      summary['pretraining'][str(seed)] = pre['pretraining']
  merge_metrics(workdir, facts)
  outputs.finish(summary, runs)
  summary['wall_s'] = wall_s
  outputs.write(workdir, summary)
  return summary


def merge_metrics(workdir, facts):
  """metrics.jsonl from each run's metrics/<run>.jsonl, in the inline sweep's order (per seed:
  its pretraining, then its cases); a run without its own file keeps its lines of the old
  metrics.jsonl (an inline run's)."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'metrics.jsonl')
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
      own = jobs_lib.metrics_path(workdir, run)
      if os.path.exists(own):
        with open(own, encoding='utf-8') as f:
          out += [l if l.endswith('\n') else l + '\n' for l in f if l.strip()]
      else:
        out += old.get(run, [])
  report.atomic_write_bytes(path, ''.join(out).encode())
