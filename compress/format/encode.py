"""Encode one tensor into its PSQ table record and data block.

A quantized tensor's block is ``scales (f32) | index | values``. The encoding with the
fewest bytes wins; ties go to the simpler one (dense, then bitmask, then Golomb), so
the choice is a pure function of the levels and the file is deterministic.

Example:
    >>> import numpy as np
    >>> from compress.format.layout import Dtype, Encoding
    >>> r, block = encode_quant(np.array([0, 3, 0, 0, 0, 0, 0, -2], np.int8), (2, 4), 4,
    ...                         np.array([0.5, 0.25], np.float32), dtype=Dtype.FLOAT32)
    >>> r.encoding == Encoding.BITMASK, r.nnz, r.shape, len(block)
    (True, 2, (2, 4), 10)
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


def encode_quant(levels: np.ndarray, shape, bits: int, scales: np.ndarray, dtype: int) -> Encoded:
    """A quantized tensor: int levels (flat, row-major) and f32 scales (1 or dims[0])."""
    levels = np.asarray(levels, dtype=np.int8).ravel()
    size = candidates(levels, bits)
    enc = min((L.DENSE, L.BITMASK, L.GOLOMB), key=lambda e: (size[e], e))
    positions = size["positions"]
    m = ub = 0
    if enc == L.DENSE:
        index, values = b"", pack_levels(levels, bits)
    elif enc == L.BITMASK:
        index, values = pack_bits(levels != 0), pack_levels(levels[positions], bits)
    else:
        m = size["m"]
        index, ub = golomb.encode(positions, m)
        values = pack_levels(levels[positions], bits)
    scale_bytes = np.ascontiguousarray(scales, dtype="<f4").tobytes()
    record = L.Record(kind=L.QUANT, dtype=dtype, store=L.QUANT_STORE, bits=bits, encoding=enc,
                      scale_count=int(np.asarray(scales).size), golomb_m=m, unary_bits=ub, rank=len(shape),
                      dims=_dims(shape), nnz=int(positions.size), index_len=len(index))
    return Encoded(record, scale_bytes + index + values)
