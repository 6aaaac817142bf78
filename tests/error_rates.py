"""Word and character error rates for the tests, via torchmetrics (once ``compress.metrics``).

The models log WER and CER with torchmetrics' ``WordErrorRate``/``CharErrorRate``
(``compress/models/base.py``), accumulated over an epoch and synced across ranks; these
functional forms compute the same corpus-level rates for a list of strings, so a test can
check a transcript, or check torchmetrics' definition against a Levenshtein oracle.

WER = (substitutions + deletions + insertions) / reference words, from the Levenshtein
alignment; CER is the same over characters. Both are corpus-level: errors and reference
lengths are summed over all utterances before dividing.

Example:
    >>> round(wer(["call mom"], ["call my mom"]), 4)
    0.3333
    >>> cer(["abc"], ["abd"])
    0.3333333432674408
"""

from __future__ import annotations


def _check(preds, refs) -> None:
    for name, v in (("preds", preds), ("refs", refs)):
        if isinstance(v, str) or not all(isinstance(s, str) for s in v):
            raise TypeError(f"{name}: expected a list of strings, got {type(v).__name__}")
    if len(preds) != len(refs):
        raise ValueError(f"preds: expected as many entries as refs ({len(refs)}), found {len(preds)}")


def wer(preds: list[str], refs: list[str]) -> float:
    """Corpus word error rate of ``preds`` against ``refs``."""
    from torchmetrics.functional.text import word_error_rate

    _check(preds, refs)
    return float(word_error_rate(list(preds), list(refs)))


def cer(preds: list[str], refs: list[str]) -> float:
    """Corpus character error rate of ``preds`` against ``refs``."""
    from torchmetrics.functional.text import char_error_rate

    _check(preds, refs)
    return float(char_error_rate(list(preds), list(refs)))
