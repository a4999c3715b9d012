"""The config field type and its constructors: what a field accepts, what it changes, its doc."""

import math
from typing import Any, Callable, NamedTuple


class Field(NamedTuple):
  """One config field: its type, its accepted values and the words that say which; whether it
  changes a run's numbers (then it is in every run's fingerprint and a workdir refuses a change
  of it), whether it changes the source pretraining (then it is in its cache key), and what it
  does in one line (docs/configuration.md and `python launch.py --help` print it)."""
  kind: Any  # a type or tuple of types; bool is never accepted as an int or a float
  ok: Callable[[Any, Any], bool] | None  # ok(value, config); None = free-form (type only)
  accepted: str | Callable[[Any], str]  # completes 'config.FIELD=VALUE: ...'; or f(config)
  numbers: bool = True
  pretraining: bool = False
  doc: str = ''


def safe(field):
  """`field` changes no number: a workdir may be resumed or grown with it changed."""
  return field._replace(numbers=False)


def pre(field):
  """`field` changes the source pretraining too."""
  return field._replace(pretraining=True)


def doc(doc, field):
  """`field` with its one-line description."""
  return field._replace(doc=doc)


def is_kind(kind, v):
  if isinstance(v, bool) and kind is not bool and bool not in (
      kind if isinstance(kind, tuple) else (kind,)):
    return False
  return isinstance(v, kind)


def int_at_least(lo, what=''):
  return Field(int, lambda v, c: v >= lo, f'must be an int >= {lo}{what}')


def number_in(lo, hi, *, lo_open, hi_open, what=''):
  def ok(v, c):
    return (math.isfinite(v) and (lo < v if lo_open else lo <= v)
            and (v < hi if hi_open else v <= hi))
  brackets = ('(' if lo_open else '[') + f'{lo:g}, {hi:g}' + (')' if hi_open else ']')
  return Field((int, float), ok, f'must be a number in {brackets}{what}')


def one_of(choices, what=''):
  return Field(str, lambda v, c: v in choices, f'must be one of {tuple(choices)}{what}')


def boolean(field_doc):
  """A True/False field with its one-line description."""
  return doc(field_doc, Field(bool, lambda v, c: True, 'must be True or False'))
