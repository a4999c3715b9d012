"""The config fields of the run: logging, checkpoints, processes, compilation, cluster jobs."""

import re
import shlex

from tljax.config.fields import Field, doc, int_at_least, safe, pre

LAUNCHERS = ('inline', 'local', 'slurm')


def _slurm_extra(v, c):
  """sbatch options as on its command line: each word '--name=value' or '--name'."""
  try:
    words = shlex.split(v)
  except ValueError:
    return False
  return all(re.fullmatch(r'--[A-Za-z][A-Za-z0-9_-]*(=.*)?', w, re.S) for w in words)


FIELDS = {
    'log_every_steps': doc('a metrics.jsonl line and a progress update every this many steps',
                            safe(int_at_least(1))),
    'progress': doc('a progress bar per run', safe(Field(bool, lambda v, c: True,
                                                          'must be True or False'))),
    'checkpoint_every_steps': doc('checkpoint the train state every this many steps', safe(
        int_at_least(0, ' (0 = no periodic checkpoints)'))),
    'restart': doc("delete this workdir's earlier results and start over", safe(Field(
        bool, lambda v, c: True, 'must be True or False'))),
    'data_parallel': doc('shard each batch over every device of every process', pre(Field(
        bool, lambda v, c: True, 'must be True or False'))),
    'num_processes': doc('processes of a multi-host run', Field(
        int, lambda v, c: v == 1 or (v > 1 and c.data_parallel),
        'must be an int >= 1, and 1 unless data_parallel=True (the processes of a run share '
        'each batch)')),
    'process_id': doc("this process's index in a multi-host run", Field(
        int, lambda v, c: 0 <= v < c.num_processes,
        lambda c: f'must be an int in [0, num_processes) = [0, {c.num_processes})')),
    'coordinator_address': doc("process 0's 'host:port' in a multi-host run", Field(
        str, lambda v, c: c.num_processes <= 1 or bool(v),
        "'host:port' of process 0 (needed when num_processes > 1)")),
    'xla_cpu_tuning': doc("on XLA:CPU, compile with tljax's measured options "
                           "(tljax/runtime/backend.py); False: XLA's defaults", pre(Field(
                               bool, lambda v, c: True, 'must be True or False'))),
    'compilation_cache': doc("keep compiled steps in JAX's persistent cache: a second run "
                              'loads them', safe(Field(bool, lambda v, c: True,
                                                       'must be True or False'))),
    'compilation_cache_dir': doc('where compiled steps are kept; trust it as you trust code',
                                  safe(Field(str, None,
                                              "a directory ('' = <cache_dir>/xla_compiled)"))),
    'compile_workers': doc("threads compiling a sweep's programs while its first cases train "
                            '(0 = one per 2 cores, 1 = one case after another before training)',
                            safe(int_at_least(0, ' (0 = one per 2 cores)'))),
    'dry_run': doc('one step per case on mock data with random weights: the costs without the '
                    'training', Field(bool, lambda v, c: True, 'must be True or False')),
    'launcher': doc("where runs go: this process, or a submitit job per run (docs/clusters.md)",
                     safe(Field(str, lambda v, c: v in LAUNCHERS and (
                         v == 'inline' or c.num_processes == 1),
                                 f'must be one of {LAUNCHERS} (jobs run one process each: '
                                 "'local' and 'slurm' need num_processes=1)"))),
    'max_parallel_jobs': doc("jobs running at once with launcher='local'", safe(int_at_least(
        1, " (jobs running at once with launcher='local')"))),
    'slurm_partition': doc("each SLURM job's partition", safe(Field(
        str, None, "a SLURM partition ('' = the cluster's default)"))),
    'slurm_gpus_per_job': doc('GPUs per SLURM job', safe(int_at_least(0))),
    'slurm_time_minutes': doc("each SLURM job's time limit; a job reaching it is requeued from "
                               'its checkpoint', safe(int_at_least(
                                   1, ' (the time limit of each job)'))),
    'slurm_extra': doc('other sbatch options, as on its command line', safe(Field(
        str, _slurm_extra, "must be sbatch options as on its command line, each '--name=value' "
        "or '--name', e.g. '--account=abc --qos=high'"))),
    'launcher_wait': doc("wait for the jobs and write the summary; False ('slurm'): a last job "
                          'gathers', safe(Field(
                              bool, lambda v, c: v or c.launcher == 'slurm',
                              "must be True or False; False needs launcher='slurm' (local jobs "
                              'are started by the waiting launcher)'))),
    'job_retries': doc("requeues at a job's time limit and resubmissions of a failed job",
                        safe(int_at_least(0))),
}
