"""Byte layout of the packed file (PSQ v1): constants, struct layouts and dtype codes.

This module is the machine-readable twin of ``FORMAT.md``; every number here is
normative there. All fields are little-endian, fixed width, with no implicit padding.

Example:
    >>> from compress.format import layout
    >>> layout.HEADER.size, layout.RECORD.size
    (48, 88)
    >>> layout.align(49)
    56
"""

from __future__ import annotations

import struct

MAGIC = b"\x89PSQ\r\n\x1a\n"  # 0x89 catches 7-bit transfers, CR LF / ^Z / LF catch text-mode mangling
MAJOR, MINOR = 1, 0
EXTENSION = ".psq"

# magic, major, minor, flags, n_tensors, meta_len, file_len, names_len, meta_crc, table_crc, header_crc
HEADER = struct.Struct("<8sHHIIIQIIII")
HEADER_CRC_SPAN = HEADER.size - 4  # header_crc covers bytes [0, 44)

# name_off, name_len, rank, kind, dtype, store, bits, encoding, scale_count, golomb_m,
# unary_bits, dims[6], nnz, data_off, data_len, index_len, data_crc, reserved
RECORD = struct.Struct("<IHBBBBBBIII6IQQQQII")
MAX_RANK = 6

ALIGN = 8  # data blocks start on 8-byte boundaries so f32/i64 payloads can be viewed in place
MAX_META = 65536  # bytes of the JSON metadata blob
MAX_NAME = 1024  # bytes of one UTF-8 tensor name
MAX_NUMEL = 1 << 28  # default reader cap on the summed element count of all tensors (1 GiB as f32)
MAX_FLOAT32 = 3.4028234663852886e38  # FLT_MAX

# kind
RAW, QUANT = 0, 1
KIND_NAMES = {RAW: "raw", QUANT: "quant"}

# encoding of a QUANT tensor's index
DENSE, BITMASK, GOLOMB = 0, 1, 2
ENCODING_NAMES = {DENSE: "dense", BITMASK: "bitmask", GOLOMB: "golomb"}

# dtype code -> (name, itemsize, struct char). The struct char is what the reference
# decoder unpacks with; bf16 has none (it is widened to f32 by a 16-bit shift).
DTYPES = {
    1: ("float32", 4, "f"),
    2: ("float16", 2, "e"),
    3: ("bfloat16", 2, None),
    4: ("float64", 8, "d"),
    5: ("int64", 8, "q"),
    6: ("int32", 4, "i"),
    7: ("int16", 2, "h"),
    8: ("int8", 1, "b"),
    9: ("uint8", 1, "B"),
    10: ("bool", 1, "?"),
}
DTYPE_CODES = {name: code for code, (name, _, _) in DTYPES.items()}
FLOAT_CODES = (1, 2, 3, 4)
F32, F16 = 1, 2


def align(n: int) -> int:
    """Round ``n`` up to the next multiple of ``ALIGN``."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def golomb_width(m: int) -> tuple[int, int]:
    """``(w, u)`` for Golomb parameter ``m``: low-field width and truncated-binary cutoff.

    With ``B = bit_length(m - 1)`` (``ceil(log2 m)``), a remainder ``r < u = 2**B - m``
    takes ``B - 1`` bits and a larger one ``B`` bits. ``m = 1`` has no remainder bits:
    ``(0, 1)``, so the only remainder, 0, is below the cutoff and reads nothing.

    Example:
        >>> golomb_width(13), golomb_width(16), golomb_width(1)
        ((3, 3), (3, 0), (0, 1))
    """
    if m <= 1:
        return 0, 1
    b = (m - 1).bit_length()
    return b - 1, (1 << b) - m


def values_len(count: int, bits: int) -> int:
    """Bytes of ``count`` densely packed ``bits``-wide fields."""
    return (count * bits + 7) // 8
