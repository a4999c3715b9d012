"""Outputs in the workdir: summary.json, results.csv, metrics.jsonl, config.json, figure.png (atomic)."""

import csv
import io
import json
import math
import os
import shutil
import tempfile

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


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
  """Appends one JSON object per line to metrics.jsonl, flushed per line."""

  def __init__(self, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._f = open(path, 'a', encoding='utf-8')

  def write(self, **record):
    self._f.write(json.dumps(_clean(record), default=_json_default) + '\n')
    self._f.flush()

  def close(self):
    self._f.close()


def write_figure(path, cases, title):
  """The thesis's figure: accuracy, loss and energy per example (log) over the cases."""
  labels = [str(c['trainable_layers']) for c in cases]
  x = range(len(cases))
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  acc = [c.get('test_accuracy') or 0.0 for c in cases]
  loss = [c.get('test_loss') or 0.0 for c in cases]
  axes[0].bar(x, [100 * a for a in acc], color='tab:blue')
  axes[0].set_ylabel('test accuracy (%)')
  axes[1].bar(x, loss, color='tab:orange')
  axes[1].set_ylabel('test loss (cross-entropy)')
  w = 0.4
  step_e = [c['energy_per_example_j'] * 1e9 for c in cases]
  thesis_e = [c['thesis_energy_per_example_j'] * 1e9 for c in cases]
  axes[2].bar([i - w / 2 for i in x], step_e, w, label='train step (XLA FLOPs / 2 x E_mac)')
  axes[2].bar([i + w / 2 for i in x], thesis_e, w, label="thesis (trainable fwd MACs x E_mac)")
  axes[2].set_yscale('log')
  positive = [e for e in step_e + thesis_e if e > 0]
  if positive:  # head-room above the bars for the legend
    axes[2].set_ylim(min(positive) / 3, max(positive) * 1e3)
  axes[2].set_ylabel('energy per example (nJ)')
  axes[2].legend(fontsize=7, loc='upper left')
  for i, c in enumerate(cases):
    if c.get('status') != 'ok':
      for ax in axes[:2]:
        ax.annotate(c.get('status', '?'), (i, 0), ha='center', va='bottom', color='red',
                    rotation=90)
  for ax in axes:
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels)
    ax.set_xlabel('trainable layers')
  fig.suptitle(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  plt.close(fig)
  atomic_write_bytes(path, buf.getvalue())


def require_free_disk(directory, nbytes, what, hint):
  """OSError naming `what`, the sizes and `hint` when `directory`'s disk has under `nbytes`."""
  free = shutil.disk_usage(directory).free
  if free < nbytes:
    raise OSError(f'{what} needs {nbytes / 2**20:.0f} MiB, but only {free / 2**20:.0f} MiB are '
                  f'free in {directory}; {hint}')
