"""The metadata section: a small, bounded JSON object (provenance), encoded canonically.

Canonical form: UTF-8, keys sorted, no whitespace, ASCII only (``ensure_ascii``), no
NaN/Infinity, at most ``MAX_META`` bytes, nesting at most ``MAX_DEPTH`` deep. The writer
emits exactly this form, so the same metadata always gives the same bytes.

Example:
    >>> blob = encode({"tool": "compress 0.1.0", "recipe": None})
    >>> blob
    b'{"recipe":null,"tool":"compress 0.1.0"}'
    >>> parse(blob, 48)["tool"]
    'compress 0.1.0'
"""

from __future__ import annotations

import json

from compress.format.errors import FormatError
from compress.format.layout import MAX_META

MAX_DEPTH = 8  # provenance is flat; deep nesting only serves to exhaust a parser's stack


def _depth(value, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def encode(meta: dict) -> bytes:
    """Canonical bytes of ``meta`` (a JSON-serializable dict with string keys)."""
    if not isinstance(meta, dict):
        raise TypeError(f"metadata must be a dict, got {type(meta).__name__}")
    try:
        blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serializable without NaN/Infinity: {err}") from None
    if len(blob) > MAX_META:
        raise ValueError(f"metadata must be at most {MAX_META} bytes as JSON, got {len(blob)}")
    if _depth(meta) > MAX_DEPTH:
        raise ValueError(f"metadata must nest at most {MAX_DEPTH} levels deep")
    return blob.encode("ascii")


def parse(blob: bytes, offset: int) -> dict:
    """Validate and parse a metadata section found at ``offset``; raise FormatError."""
    if len(blob) > MAX_META:
        raise FormatError(f"metadata: length {len(blob)} exceeds {MAX_META} at offset {offset}")
    # Bound the nesting before json.loads so a '[[[[...' blob cannot recurse deeply.
    depth = peak = 0
    in_string = escaped = False
    for ch in blob:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == 0x5C, ch != 0x22)
        elif ch == 0x22:
            in_string = True
        elif ch in (0x5B, 0x7B):  # [ {
            depth += 1
            peak = max(peak, depth)
        elif ch in (0x5D, 0x7D):  # ] }
            depth -= 1
    if peak > MAX_DEPTH:
        raise FormatError(f"metadata: nesting deeper than {MAX_DEPTH} at offset {offset}")
    try:
        value = json.loads(blob.decode("ascii"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FormatError(f"metadata: invalid JSON at offset {offset}: {err}") from None
    if not isinstance(value, dict):
        raise FormatError(f"metadata: expected a JSON object at offset {offset}, found {type(value).__name__}")
    if encode(value) != blob:
        raise FormatError(f"metadata: not in canonical form at offset {offset}")
    return value
