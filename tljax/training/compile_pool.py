"""The compile pool: a sweep's programs compiled on threads while its first cases train.

XLA's compilation releases the GIL (jax#11788), so `compile_workers` threads compile that many
programs at once (one XLA:CPU compile already keeps about two cores busy: CORES_PER_COMPILE). Each thread also traces and lowers its program: that holds the GIL, so the
threads take turns at it (7-8 % of a program's seconds on the small CNN), and the main thread
stays free to train instead of lowering every program before the first case. Every case's
train step compiles first (case.check_memory needs them all before any training), then each
case's other steps in case order, the counting twins last: the first case trains as soon as its
own steps are ready while the later ones compile, and a twin only delays the saving of its
case's record (Plan.counted). With one worker, nothing runs on a thread: each case compiles in
turn before training, as case.plan_case does.
"""

import collections.abc
import concurrent.futures
import heapq
import itertools
import os
import threading
import time
import types

from tljax.runtime import parallel
from tljax.training import case as case_lib
from tljax.training import compiled

POLL_S = 0.2  # how often a wait for a program looks for SIGINT/SIGTERM


# One XLA:CPU compile keeps about this many cores busy by itself (jaxlib 0.10 on 2 cores: 1.8
# CPU seconds per second; two programs at once each took twice as long): the default pool runs
# one thread per that many cores (benchmarks/README.md "The compile pool").
CORES_PER_COMPILE = 2


def workers(config):
  """The pool's threads: config.compile_workers, 0 = one per CORES_PER_COMPILE cores this
  process may run on (at least one: on 2 cores, the serial order)."""
  n = int(config.get('compile_workers', 1))
  if n:
    return n
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count() or 1
  return max(1, cores // CORES_PER_COMPILE)


def _rank(part):
  """0 for the train steps, 2 for what only records need (case.LATE), 1 for the rest."""
  return 0 if part == 'train' else 2 if part in case_lib.LATE else 1


class Pool:
  """Runs compile parts on `n` threads, the one of lowest (rank, case, order) first; with n=1 in
  the calling thread, at once, or for a rank-2 part (case.LATE) when it is first waited for (a
  case a search stops never compiles them). Keeps what every compile_step took and the main
  thread's time in the pool's business (making cases, waiting)."""

  def __init__(self, n):
    self.n, self.t0, self.end = n, time.perf_counter(), None
    self.main_s = 0.0  # the main thread's seconds making cases and waiting for programs
    self.programs = []  # (order, j, case, part, step, seconds) of every compile_step
    self._heap, self._lock, self._order = [], threading.Lock(), itertools.count()
    self._lazy = {}  # n=1: future -> its rank-2 item, run when waited for
    self.late_s = 0.0  # the seconds of those (after the pool's wall: a record needed them)
    self._executor = None if n == 1 else concurrent.futures.ThreadPoolExecutor(
        n, thread_name_prefix='tljax-compile')

  def submit(self, index, case, part, fn):
    """A future of `fn`() (the part `part` of case number `index`, named `case`)."""
    item = (_rank(part), index, next(self._order), case, part, fn,
            concurrent.futures.Future())
    if self._executor is None and item[0] == 2:
      self._lazy[item[-1]] = item
    elif self._executor is None:
      self._run(item)
    else:
      with self._lock:
        heapq.heappush(self._heap, item)
      self._executor.submit(self._next)
    return item[-1]

  def seal(self):
    """No more parts: the threads end once the last is compiled."""
    if self._executor is not None:
      self._executor.shutdown(wait=False)

  def _next(self):
    with self._lock:
      item = heapq.heappop(self._heap)
    self._run(item)

  def _run(self, item, late=False):
    _, _, order, case, part, fn, future = item
    if not future.set_running_or_notify_cancel():
      return
    log, error, result = [], None, None
    try:
      with compiled.logged(log):
        result = fn()
    except BaseException as e:  # pylint: disable=broad-except  # raised where it is waited for
      error = e
    with self._lock:  # before the result: whoever waits for it sees the times
      self.programs += [(order, j, case, part, step, s) for j, (step, s) in enumerate(log)]
      if late:
        self.late_s += sum(s for _, s in log)
      else:
        self.end = time.perf_counter()
    if error is None:
      future.set_result(result)
    else:
      future.set_exception(error)

  def ready(self, future):
    """Whether `future`'s result comes without waiting for a thread (done, or run when asked)."""
    return future.done() or future in self._lazy

  def wait(self, future, detail):
    """`future`'s result; stops cleanly at SIGINT/SIGTERM (`detail` says where)."""
    t = time.perf_counter()
    if future in self._lazy:
      self._run(self._lazy.pop(future), late=True)
    try:
      while not parallel.multi_process():  # a wait that polls: every process's would differ
        if concurrent.futures.wait([future], timeout=POLL_S).done:
          break
        parallel.check_interrupt(detail)  # one process: interrupt.check
      return future.result()
    finally:
      self.main_s += time.perf_counter() - t

  def close(self):
    """Cancels the parts not started and waits for those compiling (XLA cannot stop one): no
    thread outlives the pool."""
    if self._executor is not None:
      with self._lock:
        for item in self._heap:
          item[-1].cancel()
      self._executor.shutdown(wait=True, cancel_futures=True)

  def report(self):
    """The summary's `compile` field."""
    with self._lock:
      programs = sorted(self.programs)
      wall = (self.end or self.t0) - self.t0
    return dict(
        workers=self.n, wall_s=wall, overlap_s=max(wall - self.main_s, 0.0),
        total_s=sum(p[-1] for p in programs), late_s=self.late_s,
        programs=[dict(case=c, part=part, step=step, compile_s=s)
                  for _, _, c, part, step, s in programs])


class Counting:
  """A case's LATE parts in the pool (its counting twin, its device-memory cross-check):
  `ready()`, and `()` their results (waiting)."""

  def __init__(self, pool, name, futures):
    self.pool, self.name, self.futures = pool, name, futures

  def ready(self):
    return all(self.pool.ready(f) for f in self.futures.values())

  def __call__(self):
    return {part: self.pool.wait(f, f'while compiling the counting twin of case {self.name}')
            for part, f in self.futures.items()}


class Plans(collections.abc.Mapping):
  """{case name: case.Plan} compiled by a Pool: plans[name] waits for that case's programs, its
  counting twin's excepted (Plan.counted waits for those)."""

  def __init__(self, pool, drafts, eval_batch):
    self.pool, self._drafts, self._eval_batch, self._plans = pool, drafts, eval_batch, {}
    self._more = []  # Plans merged in (cases planned later: merge)

  def merge(self, other):
    """Adds the cases of `other` (Plans over its own pool, closed and reported with this one)."""
    self._more.append(other)

  def __getitem__(self, name):
    for m in self._more:
      if name in m:
        return m[name]
    if name not in self._plans:
      c, futures = self._drafts[name]
      detail = f'while compiling case {name}'
      done = {p: self.pool.wait(f, detail) for p, f in futures.items() if _rank(p) < 2}
      late = {p: f for p, f in futures.items() if _rank(p) == 2}
      self._plans[name] = case_lib.finish_plan(
          c, done, self._eval_batch, Counting(self.pool, name, late) if late else None)
    return self._plans[name]

  def __iter__(self):
    yield from self._drafts
    for m in self._more:
      yield from m

  def __len__(self):
    return len(self._drafts) + sum(len(m) for m in self._more)

  def report(self):
    return self.pool.report()

  def close(self):
    for m in self._more:
      m.close()
    self.pool.close()


def plan_cases(config, specs, num_classes, eval_batch, mesh=None, train=None):
  """Plans of `specs` compiled on workers(config) threads; returns once every train step has
  compiled and its memory fits (case.check_memory). Close it (Plans.close) when done."""
  pool = Pool(workers(config))
  try:
    drafts, later = {}, []
    for i, spec in enumerate(specs):
      c, parts = case_lib.case_parts(config, spec, num_classes, eval_batch, mesh, train)
      futures = {'train': pool.submit(i, c.name, 'train', parts.pop('train'))}
      later += [(i, c.name, part, fn, futures) for part, fn in parts.items()]
      drafts[c.name] = c, futures
      if pool.n == 1:  # serial: each case compiles in turn, as case.plan_case
        later = _submit(pool, later)
    _submit(pool, later)
    pool.seal()
    pool.main_s += time.perf_counter() - pool.t0
    case_lib.check_memory(config, [types.SimpleNamespace(case=c, train_cost=pool.wait(
        f['train'], f'while compiling case {c.name}').cost) for c, f in drafts.values()])
  except BaseException:
    pool.close()
    raise
  return Plans(pool, drafts, eval_batch)


def _submit(pool, later):
  """Submits the parts in `later` ((index, name, part, thunk, the case's futures)); []."""
  for i, name, part, fn, futures in later:
    futures[part] = pool.submit(i, name, part, fn)
  return []

