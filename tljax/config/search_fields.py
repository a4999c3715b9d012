"""The config fields of the search: the validation split, how cases are chosen to train."""

from tljax.config.fields import boolean, doc, int_at_least, number_in, safe

FIELDS = {
    'validation_fraction': doc(
        "fraction of each class of the target's train split held out (by seed) for proxies and "
        'early decisions; never trained on', number_in(
            0, 1, lo_open=False, hi_open=True, what=' (0 = no validation split)')),
    'proxies': safe(boolean(
        'score the cases with the selection proxies before they train, rank the proxies against '
        'the sweep (proxies.json)')),
    'proxy_batches': doc('train batches (of batch_size) the gradient proxies read', safe(
        int_at_least(1))),
    'proxy_examples': doc('train examples the feature proxies read', safe(
        int_at_least(0, ' (0 = the whole train split)'))),
}
