"""Golomb-coded gaps between nonzero positions (Rice coding is the case ``m = 2**k``).

For independent zero positions at density ``d`` the gaps are geometric, and Golomb's
code with the right ``m`` is the optimal prefix code for them (Gallager & Van Voorhis
1975), so the index lands within a fraction of a percent of the entropy ``H(d)`` per
element; a power-of-two ``m`` (Rice) can cost ~1% more at ``d = 0.05``.

The stream splits each code in three parts so that decoding vectorizes: the unary
quotients (``q`` zeros, then a one), the ``w``-bit low fields, and one extra bit per
code whose low field is ``>= u`` (see ``layout.golomb_width``). Total bits equal the
classic interleaved truncated-binary Golomb code.

Example:
    >>> import numpy as np
    >>> pos = np.array([3, 4, 20])
    >>> blob, ub = encode(pos, 4)
    >>> decode(np.frombuffer(blob, np.uint8), 4, ub, 3, 32, 0).tolist()
    [3, 4, 20]
"""

from __future__ import annotations

import math

import numpy as np

from compress.format.bitpack import field_bits, pack_bits
from compress.format.errors import FormatError
from compress.format.layout import golomb_width


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Gaps ``pos[i] - pos[i-1] - 1`` with ``pos[-1] = -1``, as int64."""
    positions = np.asarray(positions, dtype=np.int64)
    return np.diff(positions, prepend=-1) - 1


def cost(gaps: np.ndarray, m: int) -> int:
    """Exact bit length of the three streams for parameter ``m``."""
    w, u = golomb_width(m)
    return int((gaps // m).sum()) + gaps.size * (1 + w) + int(((gaps % m) >= u).sum() if m > 1 else 0)


def choose_m(gaps: np.ndarray) -> int:
    """The ``m`` with the fewest bits, searched near the geometric optimum (ties: smaller m).

    For a geometric gap with success probability ``p`` the optimal parameter is
    ``ceil(log(2 - p) / -log(1 - p))`` (Gallager & Van Voorhis 1975). Real gaps are only
    roughly geometric, so the search scans ratios 2^(k/8) around it, then refines by one.
    """
    if gaps.size == 0:
        return 1
    p = 1.0 / (float(gaps.mean()) + 1.0)
    m0 = 1 if p >= 0.5 else max(1, math.ceil(math.log(2 - p) / -math.log1p(-p)))
    cands = sorted({max(1, round(m0 * 2 ** (k / 8))) for k in range(-16, 17)} | {1})
    best = min(cands, key=lambda m: (cost(gaps, m), m))
    near = range(max(1, best - 3), best + 4)
    return min(near, key=lambda m: (cost(gaps, m), m))


def encode(positions: np.ndarray, m: int) -> tuple[bytes, int]:
    """The index bytes for sorted ``positions`` and the unary stream's bit length."""
    g = gaps_of(positions)
    w, u = golomb_width(m)
    q, r = g // m, g % m
    unary = np.zeros(int(q.sum()) + g.size, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 1
    long = r >= u
    low = np.where(long, (r + u) >> 1, r)
    extra = ((r + u) & 1)[long]
    return pack_bits(np.concatenate([unary, field_bits(low, w), extra.astype(np.uint8)])), unary.size


def _fields(bits: np.ndarray, count: int, w: int) -> np.ndarray:
    """``count`` ``w``-bit fields from a 0/1 byte per bit: uint8 for ``w <= 7``, else int64.

    Each field's ``w`` bytes, padded to ``p`` = 1, 2, 4 or 8, are read as one little-endian
    ``p``-byte integer, and bit-byte ``j`` (at bit ``8j``) is shifted down to bit ``j``: a few
    contiguous passes, several times faster than one strided pass per bit.
    """
    if w == 0 or w > 7:  # m = 1, or m > 256 (densities below ~0.3%): one strided pass per bit
        low = np.zeros(count, dtype=np.uint8 if w == 0 else np.int64)
        for j in range(w):
            low |= bits[j::w].astype(np.int64) << j
        return low
    p = 1 << (w - 1).bit_length()  # w <= 7: every remainder (< m <= 256) fits uint8
    grid = bits.reshape(count, w)
    if p != w:
        grid = np.zeros((count, p), dtype=np.uint8)
        grid[:, :w] = bits.reshape(count, w)
    word = grid.view(f"<u{p}").reshape(count)
    low = word.copy()
    for j in range(1, w):
        low |= word >> (7 * j)
    low &= (1 << w) - 1
    return low.astype(np.uint8)


def decode(idx: np.ndarray, m: int, unary_bits: int, nnz: int, numel: int, at: int) -> np.ndarray:
    """Positions (int64) from index bytes ``idx``; the same checks as the reference decoder.

    Every step is one vectorized pass over ``nnz`` codes, in the narrowest dtype that holds
    its values (uint8 while ``m <= 256``): at these sizes the passes are bound by memory traffic.
    """
    w, u = golomb_width(m)
    bits = np.unpackbits(idx, bitorder="little")
    if unary_bits + nnz * w > bits.size:
        raise FormatError(f"index: {unary_bits + nnz * w} bits do not fit {idx.size} bytes at offset {at}")
    ones = np.flatnonzero(bits[:unary_bits].view(bool))  # bool: branch-free and ~10x faster than uint8
    if ones.size != nnz or (nnz and ones[-1] != unary_bits - 1):
        raise FormatError(f"index: unary stream holds {ones.size} codes for nnz {nnz} at offset {at}")
    low_end = unary_bits + nnz * w
    low = _fields(bits[unary_bits:low_end], nnz, w)
    long = low >= u
    n_extra = int(np.count_nonzero(long))
    end = low_end + n_extra
    if (end + 7) // 8 != idx.size:
        raise FormatError(f"index: {end} bits do not fill {idx.size} bytes at offset {at}")
    if bits[end:].any():
        raise FormatError(f"index: nonzero pad bits at offset {at + idx.size - 1}")
    r = low  # the remainder: low if low < u, else 2 * low + extra - u
    if n_extra:
        # Branch-free: every code gathers "its" extra bit (the next unread one), only long
        # codes use it. In uint8 a short code's term wraps, but it is multiplied by 0.
        k = long.astype(np.intp)  # then an in-place cumsum: with a dtype cast, cumsum is ~20x slower
        np.cumsum(k, out=k)
        k += low_end - 1  # codes before the first long one read bit low_end - 1: in range, unused
        t = np.take(bits, k).astype(r.dtype, copy=False)
        t += r
        t -= r.dtype.type(u)
        t *= long
        r += t
    # pos_k = -1 + sum_{i<=k} (q_i m + r_i + 1) with sum_{i<=k} q_i = ones_k - k, so
    # pos = m * ones + cumsum(r + 1 - m) + m - 1: no diff, no arange. Magnitudes: ones < 8 * len(file),
    # m <= 2^28, |cumsum| <= nnz * m < 2^56: no int64 overflow.
    d = r.astype(np.int64)
    d -= m - 1
    np.cumsum(d, out=d)
    pos = ones
    pos *= m
    pos += d
    pos += m - 1
    if nnz and pos[-1] >= numel:  # positions strictly increase: the last one bounds them all
        raise FormatError(f"index: position {int(pos[-1])} outside {numel} elements at offset {at}")
    return pos
