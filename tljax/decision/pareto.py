"""The Pareto front of the cases: mean test accuracy up, training energy and memory down."""

# memory= names the field the front (and a budget) reads memory from, in bytes.
MEMORY_FIELDS = {'xla': 'train_memory_bytes', 'device': 'device_train_memory_bytes'}


def _field(fields, kind, name, means):
  """fields[name]; ValueError naming `kind`=`name` and what is accepted (`means` says what)."""
  if name not in fields:
    raise ValueError(f"{kind}={name!r}: must be one of {', '.join(map(repr, fields))} ({means})")
  return fields[name]


def memory_field(memory):
  """The record field of `memory` ('xla' or 'device')."""
  return _field(MEMORY_FIELDS, 'memory', memory,
                "XLA's analysis of the compiled step, or the device memory model")


# energy= names the field the front, the figures and a budget read energy from, in J per
# example: the MAC energy (FLOPs / 2 x e_mac_j, the thesis's) or that plus the energy of the
# bytes the step accesses (docs/accounting.md "Memory traffic").
ENERGY_FIELDS = {'mac': 'energy_per_example_j', 'memory': 'energy_with_memory_per_example_j'}
ENERGY_NAMES = {'mac': 'MAC energy', 'memory': 'energy with memory'}


def energy_field(energy):
  """The record field of `energy` ('mac' or 'memory')."""
  return _field(ENERGY_FIELDS, 'energy', energy,
                'FLOPs / 2 x e_mac_j, or that plus bytes accessed x e_byte_j')


def energy_of(case, energy='mac'):
  """The case's energy per example (J) as `energy` says; None when it has none."""
  return case.get(energy_field(energy))


def accuracy(case):
  """The case's mean test accuracy (a fraction; a one-seed record's own test_accuracy)."""
  return case.get('test_accuracy_mean', case.get('test_accuracy'))


# Statuses (stats.STATUSES) of cases with runs missing or failed for good: off the front and
# the recommendation unless config.include_incomplete.
INCOMPLETE = ('incomplete', 'failed')


def is_ok(case, include_incomplete=False):
  """A case whose every planned seed finished with a test accuracy and the same costs; with
  `include_incomplete` also one whose other runs are missing or failed for good (status
  'incomplete' or 'failed'), as long as a run finished and none diverged."""
  if accuracy(case) is None:
    return False
  status = case.get('status', 'ok')
  return status == 'ok' or bool(
      include_incomplete and status in INCOMPLETE and not case.get('seeds_diverged'))


def costs(case, memory='xla', energy='mac'):
  """(mean accuracy, energy per example as `energy` says, memory bytes as `memory` says) of an
  ok case; ValueError naming the case and field when one is missing."""
  field, e_field = memory_field(memory), energy_field(energy)
  values = (accuracy(case), case.get(e_field), case.get(field))
  for name, v in zip(('test_accuracy', e_field, field), values):
    if v is None:
      hint = (" (this summary has no device memory model: use XLA's, memory='xla' or "
              '--memory=xla)') if (memory == 'device' and name == field) else (
                  " (this summary has no memory traffic: use the MAC energy, energy='mac' or "
                  '--energy=mac)' if energy == 'memory' and name == e_field else '')
      raise ValueError(f"case {case.get('case')!r} has no {name}{hint}")
  return values


def dominates(a, b):
  """Whether costs `a` are at least as good as `b` in all three and strictly better in one."""
  at_least = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
  return at_least and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def front(cases, memory='xla', include_incomplete=False, energy='mac'):
  """Names of the ok cases (is_ok) that no other ok case dominates on accuracy, `energy` and
  `memory` (cases with equal costs both stay); a case that is not ok (a seed diverged or
  missing, costs that differ) is never on it."""
  ok = {c['case']: costs(c, memory, energy) for c in cases if is_ok(c, include_incomplete)}
  return {n for n, p in ok.items() if not any(dominates(q, p) for m, q in ok.items() if m != n)}
