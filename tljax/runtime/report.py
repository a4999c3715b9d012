"""File writes: JSON and CSV atomically (a temporary file renamed over), metrics lines appended."""

import csv
import io
import json
import math
import os
import shutil
import tempfile


def atomic_write_bytes(path, data: bytes):
  """Writes to a temporary file in the same directory, fsyncs, then renames over `path`."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _json_default(x):
  if hasattr(x, 'tolist'):
    return x.tolist()
  if isinstance(x, (set, frozenset, tuple)):
    return list(x)
  raise TypeError(f'Not JSON serialisable: {type(x).__name__}')


def _clean(x):
  """JSON has no NaN/Inf: write them as null (the record's status says why)."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def write_json(path, obj):
  atomic_write_bytes(path, (json.dumps(_clean(obj), indent=2, default=_json_default,
                                       allow_nan=False) + '\n').encode())


def is_scalar(value):
  """A value that fits one CSV cell: a number, string, boolean or null."""
  return value is None or isinstance(value, (bool, int, float, str))


def csv_columns(cases):
  """results.csv's columns: every field of the case records whose values are all scalars, in the
  records' order (the record is the one source of truth; lists and dicts stay in summary.json)."""
  columns = {}
  for c in cases:
    for k, v in c.items():
      columns[k] = columns.get(k, True) and is_scalar(v)
  return [k for k, scalar in columns.items() if scalar]


def write_csv(path, cases):
  columns = csv_columns(cases)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=columns, lineterminator='\n')
  w.writeheader()
  for c in cases:
    w.writerow({k: ('' if c.get(k) is None else c.get(k)) for k in columns})
  atomic_write_bytes(path, buf.getvalue().encode())


class MetricsWriter:
  """Appends one JSON object per line to metrics.jsonl, flushed per line; with `path` None it
  writes nothing (the processes of a multi-process run other than process 0)."""

  def __init__(self, path):
    self._f = None
    if path is not None:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._f = open(path, 'a', encoding='utf-8')

  def write(self, **record):
    if self._f is not None:
      self._f.write(json.dumps(_clean(record), default=_json_default) + '\n')
      self._f.flush()

  def close(self):
    if self._f is not None:
      self._f.close()


def require_free_disk(directory, nbytes, what, hint):
  """OSError naming `what`, the sizes and `hint` when `directory`'s disk has under `nbytes`."""
  free = shutil.disk_usage(directory).free
  if free < nbytes:
    raise OSError(f'{what} needs {nbytes / 2**20:.0f} MiB, but only {free / 2**20:.0f} MiB are '
                  f'free in {directory}; {hint}')
