"""Encode one tensor into its PSQ table record and data block.

A quantized tensor's block is ``scales | index | values``. The encoding with the fewest
bytes wins; ties go to the simpler one (dense, then bitmask, then Golomb), and BLOCK wins
only when it is strictly smaller than all three, so the choice is a pure function of the
levels and the file is deterministic. Scales are float32, or 16 bits when asked for and
exact there (FORMAT.md, "Writer rules").

Example:
    >>> import numpy as np
    >>> from compress.format.layout import Dtype, Encoding
    >>> r, block = encode_quant(np.array([0, 3, 0, 0, 0, 0, 0, -2], np.int8), (2, 4), 4,
    ...                         np.array([0.5, 0.25], np.float32), dtype=Dtype.FLOAT32)
    >>> r.encoding == Encoding.BITMASK, r.nnz, r.shape, len(block)
    (True, 2, (2, 4), 10)
    >>> q = np.zeros((4, 64), np.int8); q[:, 8:16] = 3      # one stored block of 8 per row
    >>> r, block = encode_quant(q, q.shape, 4, np.full(4, 0.5, np.float32), dtype=Dtype.FLOAT32, scales16=True)
    >>> r.encoding == Encoding.BLOCK, r.block, r.store == Dtype.FLOAT16, len(block)
    (True, 8, True, 28)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from compress.format import golomb
from compress.format import layout as L
from compress.format.bitpack import pack_bits, pack_levels


class Encoded(NamedTuple):
    """One encoded tensor: its record and its data block. The record's placement in the file
    (``name``, ``name_off``, ``name_len``, ``data_off``, ``data_len``, ``data_crc``) is the
    writer's to fill in; every other field is final."""

    record: L.Record
    block: bytes


def _dims(shape) -> tuple:
    shape = tuple(int(d) for d in shape)
    if len(shape) > L.MAX_RANK:
        raise ValueError(f"tensor rank must be at most {L.MAX_RANK}, got shape {shape}")
    if any(d >= 1 << 32 for d in shape):
        raise ValueError(f"every dimension must be below 2**32, got shape {shape}")
    return shape + (0,) * (L.MAX_RANK - len(shape))


def encode_raw(payload: bytes, shape, dtype: int, store: int) -> Encoded:
    """A passthrough tensor whose little-endian bytes (in ``store``) are ``payload``; the
    quantization fields stay 0."""
    return Encoded(L.Record(kind=L.RAW, dtype=dtype, store=store, rank=len(shape), dims=_dims(shape)), payload)


def block_stored(levels: np.ndarray, shape, block: int) -> np.ndarray:
    """BLOCK's index: a bool per block (``rows x nb``, row-major), True where a level is nonzero."""
    rows, cols, nb = L.block_grid(shape, block)
    grid = np.zeros((rows, nb * block), dtype=bool)
    grid[:, :cols] = levels.reshape(rows, cols) != 0
    return grid.reshape(rows, nb, block).any(axis=2).reshape(-1)


def block_values(levels: np.ndarray, shape, block: int, stored: np.ndarray) -> np.ndarray:
    """BLOCK's values: every level of every stored block, in order (zeros included)."""
    rows, cols, nb = L.block_grid(shape, block)
    col = np.arange(cols) // block  # each element's block in its row
    keep = stored.reshape(rows, nb)[:, col]
    return levels.reshape(rows, cols)[keep]


def block_cost(levels: np.ndarray, shape, bits: int, block: int) -> int:
    """Bytes of BLOCK's index + values with width ``block``."""
    rows, cols, nb = L.block_grid(shape, block)
    stored = block_stored(levels, shape, block).reshape(rows, nb)
    last = cols - (nb - 1) * block  # the width of each row's last block
    count = int(stored.sum()) * block - int(stored[:, -1].sum()) * (block - last)
    return (rows * nb + 7) // 8 + L.values_len(count, bits)


def block_widths(shape) -> tuple:
    """The widths the writer tries for BLOCK: ``BLOCK_WIDTHS`` that fit a row (``b <= cols``)."""
    _, cols, _ = L.block_grid(shape, 1)
    return tuple(b for b in L.BLOCK_WIDTHS if b <= cols)


def scale_store(scales: np.ndarray) -> int:
    """The narrowest exact storage of ``scales``: float16 if every scale round-trips through it,
    else bfloat16 if every one does, else float32 (``QUANT_STORE``).

    Example:
        >>> scale_store(np.array([0.5, 0.375], np.float32)) == L.Dtype.FLOAT16
        True
        >>> scale_store(np.array([2.0 ** -30], np.float32)) == L.Dtype.BFLOAT16
        True
        >>> scale_store(np.array([0.1], np.float32)) == L.QUANT_STORE
        True
    """
    s = np.ascontiguousarray(scales, dtype=np.float32).ravel()
    with np.errstate(over="ignore"):  # a scale past float16's range is simply not exact there
        if np.array_equal(s.astype(np.float16).astype(np.float32).view(np.uint32), s.view(np.uint32)):
            return L.Dtype.FLOAT16
    if not np.any(s.view(np.uint32) & 0xFFFF):  # bfloat16 is the high half of a float32
        return L.Dtype.BFLOAT16
    return L.QUANT_STORE


def scale_bytes(scales: np.ndarray, store: int) -> bytes:
    """The scales as stored: little-endian float32, float16, or the high halves (bfloat16)."""
    s = np.ascontiguousarray(scales, dtype=np.float32).ravel()
    if store == L.Dtype.FLOAT16:
        return s.astype("<f2").tobytes()
    if store == L.Dtype.BFLOAT16:
        return (s.view(np.uint32) >> 16).astype("<u2").tobytes()
    return s.astype("<f4").tobytes()


def candidates(levels: np.ndarray, bits: int) -> dict:
    """Byte size of the index + values under each encoding, plus what Golomb needs."""
    numel = levels.size
    positions = np.flatnonzero(levels)
    nnz = positions.size
    gaps = golomb.gaps_of(positions)
    m = golomb.choose_m(gaps)
    vals = L.values_len(nnz, bits)
    return {
        L.DENSE: L.values_len(numel, bits),
        L.BITMASK: (numel + 7) // 8 + vals,
        L.GOLOMB: (golomb.cost(gaps, m) + 7) // 8 + vals,
        "m": m,
        "positions": positions,
    }


def encode_quant(levels: np.ndarray, shape, bits: int, scales: np.ndarray, dtype: int,
                 scales16: bool = False) -> Encoded:
    """A quantized tensor: int levels (flat, row-major) and f32 scales (1 or dims[0]).

    ``scales16``: store the scales in 16 bits when every one is exact there (``scale_store``);
    the decoded values are then bit-identical to those of float32 scales.
    """
    levels = np.asarray(levels, dtype=np.int8).ravel()
    shape = tuple(int(d) for d in shape)
    size = candidates(levels, bits)
    enc = min((L.DENSE, L.BITMASK, L.GOLOMB), key=lambda e: (size[e], e))
    positions = size["positions"]
    m = ub = block = 0
    widths = block_widths(shape) if levels.size else ()
    if widths:  # BLOCK only when strictly smaller; among widths the smallest, ties to the narrower
        cost, b = min((block_cost(levels, shape, bits, b), b) for b in widths)
        if cost < size[enc]:
            enc, block = L.BLOCK, b
    if enc == L.BLOCK:
        stored = block_stored(levels, shape, block)
        index, values = pack_bits(stored), pack_levels(block_values(levels, shape, block, stored), bits)
    elif enc == L.DENSE:
        index, values = b"", pack_levels(levels, bits)
    elif enc == L.BITMASK:
        index, values = pack_bits(levels != 0), pack_levels(levels[positions], bits)
    else:
        m = size["m"]
        index, ub = golomb.encode(positions, m)
        values = pack_levels(levels[positions], bits)
    store = scale_store(scales) if scales16 else L.QUANT_STORE
    record = L.Record(kind=L.QUANT, dtype=dtype, store=store, bits=bits, encoding=enc,
                      scale_count=int(np.asarray(scales).size), golomb_m=m, unary_bits=ub, rank=len(shape),
                      dims=_dims(shape), nnz=int(positions.size), index_len=len(index), block=block)
    return Encoded(record, scale_bytes(scales, store) + index + values)
