"""The launcher: local jobs give the inline summary, SLURM submissions, status, reruns, checks."""

import json
import os
import re
import shutil
import stat
import time

import pytest

from conftest import shrunk_default
from tljax.cluster import executors
from tljax.cluster import job as job_lib
from tljax.cluster import jobs as jobs_lib
from tljax.cluster import launcher
from tljax.config import checks
from tljax import run
from tljax import status
from tljax.sweep import runner

TIMING = {'wall_s', 'compile_s', 'examples_per_s'}


def _config(cache, **fields):
  c = shrunk_default(cache)
  c.cases = (1, 23)
  for k, v in fields.items():
    setattr(c, k, v)
  return c


def _strip(summary):
  """Everything but timings, the machine and the cache's path (each run pretrains in its own),
  and the inline sweep's `search` (jobs train every case: a launcher's summary has none)."""
  out = {k: v for k, v in summary.items()
         if k not in TIMING | {'eval_compile_s', 'compile', 'environment', 'config', 'search'}}
  out['runs'] = [{k: v for k, v in r.items() if k not in TIMING} for r in summary['runs']]
  out['cases'] = [{k: v for k, v in c.items() if not k.startswith(tuple(TIMING))}
                  for c in summary['cases']]
  out['pretraining'] = {s: {k: v for k, v in p.items() if k not in TIMING | {'path'}}
                        for s, p in summary['pretraining'].items()}
  return out


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items() if k != 'examples_per_s'} for l in f]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The same dry run (every accounting field exact; one step on mock data, so no pretraining:
  the suite's time limit) inline and as two local jobs at once."""
  root = tmp_path_factory.mktemp('launcher')
  inline = runner.train_and_evaluate(_config(root / 'cache', dry_run=True, prefix_cache=False),
                                    str(root / 'inline'))
  local_config = _config(root / 'cache', dry_run=True, prefix_cache=False, launcher='local',
                         max_parallel_jobs=2)
  local = run.train_and_evaluate(local_config, str(root / 'local'))
  return root, local_config, inline, local


def test_local_jobs_give_the_inline_summary(runs):
  root, _, inline, local = runs
  assert _strip(local) == _strip(inline)
  assert [c['case'] for c in local['cases']] == ['last:1', 'last:23']
  assert local['config']['launcher'] == 'local' and inline['config']['launcher'] == 'inline'
  assert local['environment']['backend'] == 'cpu'  # the jobs' environment
  assert _metrics(root / 'local') == _metrics(root / 'inline')
  book = json.loads((root / 'local' / 'jobs.json').read_text())
  assert sorted((j['kind'], j['case'], j['seed']) for j in book['jobs']) == [
      ('case', 'last:1', 0), ('case', 'last:23', 0)]
  assert sorted(os.listdir(root / 'local' / 'metrics')) == [
      f'{jobs_lib.Task("case", 0, n).run}.jsonl' for n in ('last:1', 'last:23')]


def test_status_lists_jobs_and_finished_runs(runs, capsys):
  root = runs[0]
  assert status.run_cli(['status', f'--workdir={root / "local"}']) == 0
  out = capsys.readouterr().out
  jobs = [l.split() for l in out.splitlines() if l.startswith('  ') and ' case ' in l]
  assert [(j[1], j[3]) for j in jobs] == [('case', 'COMPLETED')] * 2
  assert 'Finished runs: 2 of 2' in out and 'last:23' in out
  assert status.run_cli(['status', f'--workdir={root / "inline"}']) == 0
  assert capsys.readouterr().out.splitlines()[:2] == [
      f'No jobs in {root / "inline"} (an inline run, or nothing submitted yet).',
      'Finished runs: 2']
  assert status.run_cli(['status', f'--workdir={root / "nope"}']) == 1
  assert capsys.readouterr().err == f'tljax: error: --workdir={root / "nope"}: no such directory\n'


def test_rerun_with_everything_finished_submits_nothing(runs):
  root, config, _, local = runs
  before = (root / 'local' / 'jobs.json').read_text()
  again = run.train_and_evaluate(config, str(root / 'local'))
  assert (root / 'local' / 'jobs.json').read_text() == before
  assert _strip(again) == _strip(local)


def test_the_gather_job_writes_the_summary_from_the_records(runs, tmp_path):
  root, config, _, local = runs
  w = tmp_path / 'w'
  shutil.copytree(root / 'local', w)
  for name in ('summary.json', 'results.csv', 'runs.csv', 'metrics.jsonl'):
    (w / name).unlink()
  facts = json.loads((w / 'jobs.json').read_text())['facts']
  job = job_lib.Job(config, str(w), jobs_lib.Task('gather'), facts, submitted_at=time.time())
  assert job_lib._gather_job(job) == f'2 runs gathered into {w}'  # pylint: disable=protected-access
  assert _strip(json.loads((w / 'summary.json').read_text())) == _strip(local)
  assert _metrics(w) == _metrics(root / 'local')


FAKE = {
    # sbatch keeps each script and answers with the next job id, as SLURM does.
    'sbatch': '#!/bin/sh\nn=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100)\n'
              'echo $((n + 1)) > "$FAKE_SLURM/next"\ncp "$1" "$FAKE_SLURM/job_$n.sh"\n'
              'echo "Submitted batch job $n"\n',
    # sacct knows no job, or every job (and array task 0-1) in the state in $FAKE_SLURM/state.
    'sacct': '#!/bin/sh\necho "$@" >> "$FAKE_SLURM/sacct.log"\necho "JobID|State|NodeList"\n'
             'st=$(cat "$FAKE_SLURM/state" 2>/dev/null) || exit 0\n'
             'while [ $# -gt 0 ]; do if [ "$1" = -j ]; then shift\n'
             '  for id in "$1" "$1_0" "$1_1"; do echo "$id|$st|node1"; done; fi; shift; done\n',
    'scancel': '#!/bin/sh\necho "$@" >> "$FAKE_SLURM/scancel.log"\n',
    'srun': '#!/bin/sh\nexit 0\n',
    'squeue': '#!/bin/sh\nexit 0\n',
}


def _sbatch_options(script):
  return dict(re.findall(r'^#SBATCH --([\w-]+)(?:=(.*))?$', script, re.M))


def _fake_slurm(tmp_path, monkeypatch):
  fake = tmp_path / 'bin'
  fake.mkdir()
  for name, text in FAKE.items():
    (fake / name).write_text(text)
    (fake / name).chmod((fake / name).stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv('PATH', f'{fake}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('FAKE_SLURM', str(fake))
  return fake


def test_slurm_submits_pretraining_then_dependent_case_arrays_and_a_gather(tmp_path, monkeypatch,
                                                                           capsys):
  fake = _fake_slurm(tmp_path, monkeypatch)
  c = _config(tmp_path / 'cache', launcher='slurm', launcher_wait=False, seeds=(0, 1),
              slurm_partition='gpu', slurm_gpus_per_job=1, slurm_time_minutes=90,
              slurm_extra='--account=abc --qos=high', pretrain_seed=-1)  # each seed its own
  assert run.train_and_evaluate(c, str(tmp_path / 'w')) is None
  jobs = {int(p.stem[4:]): _sbatch_options(p.read_text()) for p in fake.glob('job_*.sh')}
  assert sorted(jobs) == [100, 101, 102, 103, 104]  # 2 pretraining, 2 case arrays, the gather
  for o in jobs.values():
    assert (o['partition'], o['account'], o['qos']) == ('gpu', 'abc', 'high')
  for pre in (100, 101):  # one per seed, no dependency, one GPU for 90 minutes
    assert 'array' not in jobs[pre] and 'dependency' not in jobs[pre]
    assert (jobs[pre]['gpus-per-node'], jobs[pre]['time']) == ('1', '90')
  for cases, pre in ((102, 100), (103, 101)):  # a 2-case array after its seed's pretraining
    assert jobs[cases]['array'] == '0-1%2'
    assert jobs[cases]['dependency'] == f'afterok:{pre}'
    assert (jobs[cases]['gpus-per-node'], jobs[cases]['time']) == ('1', '90')
  assert jobs[104]['dependency'] == 'afterany:100:101:102:103'
  assert 'gpus-per-node' not in jobs[104] and 'array' not in jobs[104]
  book = json.loads((tmp_path / 'w' / 'jobs.json').read_text())
  assert [(j['kind'], j['seed'], j['job_id']) for j in book['jobs']] == [
      ('pretrain', 0, '100'), ('pretrain', 1, '101'), ('case', 0, '102_0'), ('case', 0, '102_1'),
      ('case', 1, '103_0'), ('case', 1, '103_1'), ('gather', None, '104')]
  # Status asks sacct (which knows none of them yet: UNKNOWN, as submitit says).
  assert status.run_cli(['status', f'--workdir={tmp_path / "w"}']) == 0
  out = capsys.readouterr().out
  assert out.count(' UNKNOWN ') == 7 and 'Finished runs: 0 of 4' in out
  assert '-j 100' in (fake / 'sacct.log').read_text()
  # Rerun while they run: no run is submitted again, only a gather job after the running ones.
  (fake / 'state').write_text('RUNNING\n')
  assert run.train_and_evaluate(c, str(tmp_path / 'w')) is None
  assert sorted(int(p.stem[4:]) for p in fake.glob('job_*.sh')) == [100, 101, 102, 103, 104, 105]
  assert _sbatch_options((fake / 'job_105.sh').read_text())['dependency'] == (
      'afterany:100:101:102:103')


def test_seeds_that_share_their_pretraining_wait_for_its_one_job(tmp_path, monkeypatch):
  fake = _fake_slurm(tmp_path, monkeypatch)
  c = _config(tmp_path / 'cache', launcher='slurm', launcher_wait=False, seeds=(0, 1))
  assert c.pretrain_seed == 0
  assert run.train_and_evaluate(c, str(tmp_path / 'w')) is None
  jobs = {int(p.stem[4:]): _sbatch_options(p.read_text()) for p in fake.glob('job_*.sh')}
  assert sorted(jobs) == [100, 101, 102]  # the one pretraining, one array of 4 after it, gather
  assert jobs[101]['array'] == '0-3%4' and jobs[101]['dependency'] == 'afterok:100'
  book = json.loads((tmp_path / 'w' / 'jobs.json').read_text())
  assert [(j['kind'], j['seed']) for j in book['jobs']] == [
      ('pretrain', 0), ('case', 0), ('case', 0), ('case', 1), ('case', 1), ('gather', None)]


@pytest.mark.parametrize('field, value, message', [
    ('launcher', 'cloud', "config.launcher='cloud': must be one of ('inline', 'local', 'slurm')"),
    ('launcher_wait', False, "config.launcher_wait=False: must be True or False; False needs "
                             "launcher='slurm'"),
    ('slurm_extra', 'account=abc', "config.slurm_extra='account=abc': must be sbatch options"),
    ('max_parallel_jobs', 0, 'config.max_parallel_jobs=0: must be an int >= 1'),
])
def test_bad_launcher_fields_fail_with_what_is_accepted(tiny_config, field, value, message):
  tiny_config.launcher = 'local'
  setattr(tiny_config, field, value)
  with pytest.raises(ValueError, match=re.escape(message)):
    checks.validate(tiny_config)


def test_slurm_extra_becomes_sbatch_parameters():
  assert executors.slurm_extra("--account=abc --constraint='h100|a100' --exclusive") == {
      'account': 'abc', 'constraint': 'h100|a100', 'exclusive': True}


def test_user_errors_are_one_list_and_a_job_fails_for_good_only_on_final_ones():
  """tljax.run shows every user error in one line; a job's error that a retry would repeat
  (a bad config, missing data) is not resubmitted, an OSError (a file system's hiccup) is."""
  from tljax.data import datasets  # pylint: disable=g-import-not-at-top
  from tljax.runtime import errors  # pylint: disable=g-import-not-at-top
  from tljax.runtime import parallel  # pylint: disable=g-import-not-at-top
  for cls in (datasets.DatasetUnavailableError, launcher.JobsFailedError,
              parallel.ProcessesError):
    assert issubclass(cls, errors.USER_ERRORS) and errors.is_final(cls('x'))
  assert not errors.is_final(OSError('disk')) and not errors.is_final(RuntimeError('crash'))

  class Failing(job_lib.Job):
    def __init__(self, exc):  # pylint: disable=super-init-not-called
      self.exc, self.cwd, self.task = exc, os.getcwd(), jobs_lib.Task('gather')

  def boom(job):
    raise job.exc
  import signal  # pylint: disable=g-import-not-at-top
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
  for exc, final in ((ValueError('config.x=1: bad'), True), (OSError('NFS'), False)):
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(job_lib, '_gather_job', boom)
      try:
        with pytest.raises(Exception) as e:
          Failing(exc)()
      finally:
        for sig, h in handlers.items():
          signal.signal(sig, h)
    line = f'{type(e.value).__module__}.{type(e.value).__name__}: {e.value}'
    assert (errors.final_line(line) == 'ValueError: config.x=1: bad') is final
