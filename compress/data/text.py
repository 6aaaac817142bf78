"""The fixed character vocabulary shared by every model: blank, space, apostrophe, a-z.

Index 0 is the CTC/RNN-T blank, so padded target positions (filled with 0) can never be
mistaken for a real character.

Example:
    >>> from compress.data.text import encode, decode, VOCAB_SIZE
    >>> ids = encode("Call mom")
    >>> decode(ids), VOCAB_SIZE
    ('call mom', 29)
"""

from __future__ import annotations

import string

from compress.checks import fail

BLANK = 0
VOCAB: tuple[str, ...] = ("<blank>", " ", "'") + tuple(string.ascii_lowercase)
VOCAB_SIZE = len(VOCAB)  # 29
_INDEX = {ch: i for i, ch in enumerate(VOCAB) if i != BLANK}


def normalize(text: str) -> str:
    """Lower-case and collapse runs of whitespace (LibriSpeech transcripts are upper case).

    Example:
        >>> normalize("  TURN  on ")
        'turn on'
    """
    if not isinstance(text, str):
        fail("text", "a str", text, TypeError)
    return " ".join(text.lower().split())


def encode(text: str) -> list[int]:
    """Map a transcript to token ids (1..28); raises ValueError on a character outside the vocabulary.

    Example:
        >>> encode("a b")
        [3, 1, 4]
    """
    text = normalize(text)
    out = []
    for pos, ch in enumerate(text):
        idx = _INDEX.get(ch)
        if idx is None:
            raise ValueError(f"text must hold only spaces, apostrophes and a-z, got {text!r} "
                             f"({ch!r} at position {pos})")
        out.append(idx)
    return out


def decode(ids) -> str:
    """Map token ids back to text, skipping blanks (no CTC collapsing: see ``ctc_collapse``).

    Example:
        >>> decode([3, 0, 4])
        'ab'
    """
    chars = []
    for i in ids:
        i = int(i)
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"ids must hold values in [0, {VOCAB_SIZE}), got {i}")
        if i != BLANK:
            chars.append(VOCAB[i])
    return "".join(chars)


def ctc_collapse(ids) -> str:
    """Greedy CTC output -> text: merge repeats, then drop blanks.

    Example:
        >>> ctc_collapse([3, 3, 0, 3, 1, 1, 4])
        'aa b'
    """
    kept, prev = [], None
    for i in ids:
        i = int(i)
        if i != prev and i != BLANK:
            kept.append(i)
        prev = i
    return " ".join(decode(kept).split())
