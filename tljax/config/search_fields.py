"""The config fields of the search: the validation split, how cases are chosen to train."""

import numbers

from tljax.config.fields import Field, boolean, doc, int_at_least, number_in, safe

# The search modes besides 'proxy:NAME' (docs/search.md "Search modes").
MODES = ('exhaustive', 'halving')
PROXY_PREFIX = 'proxy:'


def proxy_name(mode):
  """NAME of a 'proxy:NAME' search, None for another mode."""
  return mode[len(PROXY_PREFIX):] if mode.startswith(PROXY_PREFIX) else None


def _form_ok(v):
  return v in MODES or bool(proxy_name(v))


def _has_validation(c):
  v = c.get('validation_fraction', 0)
  return isinstance(v, numbers.Real) and v > 0


def _search_ok(v, c):
  return _form_ok(v) and (v == 'exhaustive' or (
      _has_validation(c) and c.get('launcher', 'inline') == 'inline'))


def _search_accepted(c):
  v = c.search
  if _form_ok(v) and v != 'exhaustive' and not _has_validation(c):
    return (f'needs config.validation_fraction > 0 (it is {c.get("validation_fraction", 0)!r}): '
            'a search decides on a validation split held out of the train split')
  if _form_ok(v) and v != 'exhaustive' and c.get('launcher', 'inline') != 'inline':
    return (f"runs inline, and config.launcher={c.get('launcher')!r} trains every run as a "
            "job; use config.launcher='inline'")
  return ("must be 'exhaustive', 'halving' or 'proxy:NAME' (NAME one of "
          'tljax.proxies.scores.NAMES; both need validation_fraction > 0)')


FIELDS = {
    'validation_fraction': doc(
        "fraction of each class of the target's train split held out (by seed) for proxies and "
        'early decisions; never trained on', number_in(
            0, 1, lo_open=False, hi_open=True, what=' (0 = no validation split)')),
    'proxies': safe(boolean(
        'exhaustive sweeps: score the cases with the selection proxies before they train, rank '
        'the proxies against the sweep (proxies.json)')),
    'proxy_batches': doc('train batches (of batch_size) the gradient proxies read', safe(
        int_at_least(1))),
    'proxy_examples': doc('train examples the feature proxies read', safe(
        int_at_least(0, ' (0 = the whole train split)'))),
    'search': doc(
        "which cases train fully: 'exhaustive' all, 'halving' successive halving's finalists, "
        "'proxy:NAME' a proxy's search_top_k best",
        safe(Field(str, _search_ok, _search_accepted))),
    'search_top_k': doc("the cases a 'proxy:NAME' search trains fully on every seed", safe(
        int_at_least(1, ' (cases)'))),
    'halving_eta': doc('successive halving keeps the best 1/eta of the cases at each rung '
                       '(and any tied with the cut)', safe(int_at_least(2))),
    'halving_confidence': doc(
        "confidence of the Wilson interval by which a case below halving's cut line ties and "
        'goes on, below the last rung (0: no ties)',
        safe(number_in(
            0, 1, lo_open=False, hi_open=True, what=' (0 = no ties: exactly 1/eta go on)'))),
    'short_training_fraction': doc(
        "fraction of a run's steps after which its validation accuracy is recorded "
        "(short_val_accuracy); halving's first rung", number_in(
            0, 1, lo_open=True, hi_open=False, what=' (a fraction of the steps)')),
}
