"""LSB-first bit packing of fixed-width fields, vectorized with numpy.

Bit ``j`` of field ``i`` is stream bit ``i * width + j``; stream bit ``p`` is bit
``p & 7`` of byte ``p >> 3``. Unused high bits of the last byte are zero. Levels are
stored as ``width``-bit two's complement.

Example:
    >>> import numpy as np
    >>> pack_fields(np.array([1, 2, 3]), 2)
    b'9'
    >>> unpack_levels(np.frombuffer(pack_levels(np.array([-7, 7, -1]), 4), np.uint8), 3, 4).tolist()
    [-7, 7, -1]
"""

from __future__ import annotations

import numpy as np


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack a 0/1 array into bytes, LSB-first."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes()


def field_bits(values: np.ndarray, width: int) -> np.ndarray:
    """The 0/1 stream (uint8) of ``values`` (non-negative, < 2**width) as ``width``-bit fields."""
    values = np.asarray(values, dtype=np.int64)
    if width == 0:
        return np.zeros(0, dtype=np.uint8)
    return ((values[:, None] >> np.arange(width, dtype=np.int64)) & 1).astype(np.uint8).ravel()


def pack_fields(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative ``values`` (< 2**width) as ``width``-bit fields."""
    return pack_bits(field_bits(values, width))


def pack_levels(levels: np.ndarray, bits: int) -> bytes:
    """Pack signed levels as ``bits``-wide two's complement fields."""
    levels = np.asarray(levels)
    if bits == 8:
        return levels.astype(np.int8).tobytes()
    return pack_fields(levels.astype(np.int64) & ((1 << bits) - 1), bits)


def unpack_fields(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """``count`` unsigned ``width``-bit fields (``width <= 8``) from a uint8 array, as int64.

    A field of at most 8 bits spans at most two bytes, so each is one 16-bit gather and
    a shift: no Python loop per element.
    """
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    if width in (1, 2, 4):  # fields never straddle bytes: k strided shifts of the whole buffer
        k = 8 // width
        out = np.empty(buf.size * k, dtype=np.uint8)
        for j in range(k):
            out[j::k] = (buf >> (j * width)) & ((1 << width) - 1)
        return out[:count].astype(np.int64)
    wide = np.zeros(buf.size + 1, dtype=np.uint16)  # one spare byte: the gather reads byte + 1
    wide[:-1] = buf
    off = np.arange(count, dtype=np.int64) * width
    byte = off >> 3
    pair = wide[byte] | (wide[byte + 1] << 8)
    return ((pair >> (off & 7).astype(np.uint16)) & ((1 << width) - 1)).astype(np.int64)


def unpack_levels(buf: np.ndarray, count: int, bits: int) -> np.ndarray:
    """``count`` signed ``bits``-wide two's complement levels, as int8.

    Sign extension is arithmetic (shift the field to the top of an int8, then shift it
    back with sign), not a table lookup: a gather would first widen every index to intp.
    """
    if bits == 8:
        return buf[:count].view(np.int8).copy()  # a copy: never alias the (read-only) file buffer
    if bits in (2, 4):  # fields never straddle bytes: spread each byte's k fields over k bytes
        k = 8 // bits
        word = buf.astype(f"<u{k}")  # byte j of the word receives field j, then masked
        spread = word.copy()
        for j in range(1, k):
            spread |= word << (j * (8 - bits))
        spread &= int.from_bytes(bytes([(1 << bits) - 1] * k), "little")
        v = spread.view(np.int8)  # contiguous: field i is byte i
        v <<= 8 - bits  # the field's sign bit to the int8's, and back: sign extension
        v >>= 8 - bits
        return v[:count]
    sign = 1 << (bits - 1)
    f = unpack_fields(buf, count, bits)
    f ^= sign  # (f ^ sign) - sign maps [sign, 2 * sign) to [-sign, 0)
    f -= sign
    return f.astype(np.int8)
