"""How jobs are submitted: submitit's executors for local jobs and SLURM, with their parameters."""

import os
import shlex
import shutil
import subprocess

import submitit
from submitit.local import local as submitit_local

LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit
GATHER_TIME_MIN = 30  # the final job of a launch that does not wait: reads records, writes outputs


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


class LocalExecutor(submitit.LocalExecutor):
  """submitit's LocalExecutor, each job in its own session: a Ctrl-C at the launcher's terminal
  does not reach the jobs; the launcher stops them itself, with SIGTERM to the job's controller
  (its id; no `setup` shell in between), which forwards it, so they checkpoint. `env`: variables
  the job's processes get."""

  env = {}

  def _submit_command(self, command):
    old = {k: os.environ.get(k) for k in self.env}
    os.environ.update(self.env)
    submitit_local.subprocess = NewSessions  # only submitit's start_controller reads it
    try:
      return super()._submit_command(command)
    finally:
      submitit_local.subprocess = subprocess
      for k, v in old.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


class NewSessions:
  """The subprocess module, as submitit's local executor sees it during a submission."""

  @staticmethod
  def Popen(*args, **kwargs):  # pylint: disable=invalid-name
    return subprocess.Popen(*args, start_new_session=True, **kwargs)


def gpu_count():
  if not shutil.which('nvidia-smi'):
    return 0
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(line.startswith('GPU ') for line in out.stdout.splitlines())


class nothing:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
