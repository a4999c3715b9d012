"""The config fields of the search: the validation split, how cases are chosen to train."""

from tljax.config.fields import doc, number_in

FIELDS = {
    'validation_fraction': doc(
        "fraction of each class of the target's train split held out (by seed) for proxies and "
        'early decisions; never trained on', number_in(
            0, 1, lo_open=False, hi_open=True, what=' (0 = no validation split)')),
}
