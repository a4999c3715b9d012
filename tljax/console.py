"""What a person sees: tljax's own log lines and library warnings, then the answer as a table."""

import logging
import os

# Library code whose INFO lines (orbax's checkpoint chatter, TFDS) are hidden; warnings stay.
QUIET_BELOW_WARNING = (os.sep + 'site-packages' + os.sep, os.sep + 'dist-packages' + os.sep)


class _LibraryInfoFilter(logging.Filter):
  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(
        p in record.pathname for p in QUIET_BELOW_WARNING)


def quiet_libraries():
  """Drops INFO/DEBUG records that installed libraries send through absl's logger."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


def _fmt(v, spec):
  return '-' if v is None else format(v, spec)


def table(summary):
  """The sweep's answer: one row per case, units in the header."""
  rows = [('case', 'trainable layers', 'test acc', 'test loss', 'train GFLOP/example',
           'energy uJ/example', 'thesis energy nJ/example', 'train memory MiB', 'wall s')]
  for c in summary['cases']:
    status = '' if c.get('status', 'ok') == 'ok' else f" ({c['status']})"
    rows.append((str(c['case']) + status, str(c['trainable_layers']),
                 _fmt(c['test_accuracy'], '.4f'), _fmt(c['test_loss'], '.4f'),
                 _fmt(c['train_flops_per_example'] / 1e9, '.4g'),
                 _fmt(c['energy_per_example_j'] * 1e6, '.4g'),
                 _fmt(c['thesis_energy_per_example_j'] * 1e9, '.4g'),
                 _fmt((c.get('train_memory_bytes') or 0) / 2**20, '.1f'),
                 _fmt(c.get('wall_s'), '.1f')))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ['  '.join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)
