"""Argument checks, one message style: ``name must be <what>, got <value!r>``.

Every public argument of the callbacks, the grid, the target selection, the recipe
checks and the commands is checked with these, so a mistake reads the same wherever it
is made. Booleans are never accepted as numbers (``True`` is an ``int`` in Python). This
module imports nothing beyond the standard library.

Example:
    >>> check_int("hard_every", 0, min=1)
    Traceback (most recent call last):
    ...
    ValueError: hard_every must be an integer >= 1, got 0
    >>> check_choice("granularity", "row", ("channel", "tensor"))
    Traceback (most recent call last):
    ...
    ValueError: granularity must be 'channel' or 'tensor', got 'row'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_BITS, MAX_BITS = 2, 8


def fail(name: str, what: str, value, error: type[Exception] = ValueError):
    """Raise ``error("{name} must be {what}, got {value!r}")``."""
    raise error(f"{name} must be {what}, got {value!r}")


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_range(min, max, min_name: str | None) -> str:
    if min is not None and max is not None:
        return f"an integer in [{min}, {max}]"
    if min is not None:
        if min == 0 and min_name is None:
            return "a non-negative integer"
        return f"an integer >= {min_name + f' ({min})' if min_name else min}"
    if max is not None:
        return f"an integer <= {max}"
    return "an integer"


def check_int(name: str, value, *, min: int | None = None, max: int | None = None, optional: bool = False,
              min_name: str | None = None) -> int | None:
    """An integer (not a bool) in ``[min, max]``; with ``optional`` None passes too.

    ``min_name`` names the argument the lower bound comes from, for the message.
    """
    if optional and value is None:
        return None
    if not is_int(value) or (min is not None and value < min) or (max is not None and value > max):
        fail(name, ("None or " if optional else "") + _int_range(min, max, min_name), value)
    return value


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, finite: bool = False, hint: str = "") -> float:
    """A number (int or float, not a bool) between ``low`` and ``high``, returned as a float.

    ``low_open``/``high_open`` exclude the bound; ``finite`` refuses NaN and ±inf (implied
    by two bounds); ``hint`` is added to the expectation, e.g. " (or a callable)".
    """
    ok = is_number(value) and not (isinstance(value, float) and math.isnan(value))
    if ok and finite and not math.isfinite(value):
        ok = False
    if ok and low is not None and (value <= low if low_open else value < low):
        ok = False
    if ok and high is not None and (value >= high if high_open else value > high):
        ok = False
    if not ok:
        kind = "a finite number" if finite else "a number"
        if low is not None and high is not None:
            what = f"a number in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
        elif low is not None:
            what = f"{kind} {'>' if low_open else '>='} {_num(low)}"
        elif high is not None:
            what = f"{kind} {'<' if high_open else '<='} {_num(high)}"
        else:
            what = kind
        fail(name, what + hint, value)
    return float(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_fraction(name: str, value, *, below_one: bool = False) -> float:
    """A number in [0, 1], or in [0, 1) with ``below_one`` (a sparsity: 1 would remove everything)."""
    return check_number(name, value, low=0.0, high=1.0, high_open=below_one)


def check_bits(name: str, value) -> int:
    """A bit width: an integer in [2, 8]."""
    return check_int(name, value, min=MIN_BITS, max=MAX_BITS)


def describe_choices(choices: Sequence, optional: bool = False) -> str:
    """``'a' or 'b'``, ``'a', 'b' or 'c'``; with ``optional``, ``None`` first."""
    items = (["None"] if optional else []) + [repr(c) for c in choices]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def check_choice(name: str, value, choices: Sequence, *, optional: bool = False):
    """One of ``choices`` (or None with ``optional``)."""
    if (optional and value is None) or (isinstance(value, str | int | float) and value in choices):
        return value
    fail(name, describe_choices(choices, optional), value)


def check_bool(name: str, value) -> bool:
    """A real ``bool`` (``TypeError`` otherwise: 1 or "yes" are not flags)."""
    if not isinstance(value, bool):
        fail(name, "a bool", value, TypeError)
    return value


def check_str(name: str, value) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        fail(name, "a non-empty string", value)
    return value
