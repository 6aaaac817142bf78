"""Byte layout of the packed file (PSQ v1): field tables, struct layouts and the codes of its fields.

This module is the machine-readable twin of ``FORMAT.md``; every number here is
normative there. All fields are little-endian, fixed width, with no implicit padding.
The header's and a record's fields are listed once, in ``HEADER_FIELDS`` and
``RECORD_FIELDS``; the structs that read and write them and the field offsets that
error messages report are built from those lists. The codes of a record's ``kind``,
``dtype``/``store`` and ``encoding`` are the ``IntEnum``s ``Kind``, ``Dtype`` and
``Encoding``; a record read from a file keeps plain ints (an unknown code is the
decoder's to reject), which compare equal to these.

Example:
    >>> from compress.format import layout
    >>> layout.HEADER.size, layout.RECORD.size
    (48, 88)
    >>> layout.HEADER_OFFSETS["file_len"], layout.RECORD_OFFSETS["data_off"]
    (24, 56)
    >>> layout.align(49)
    56
    >>> layout.Dtype.BFLOAT16 == 3, layout.DTYPES[layout.Dtype.BOOL]
    (True, ('bool', 1, '?'))
"""

from __future__ import annotations

import math
import struct
from enum import IntEnum
from typing import NamedTuple

MAGIC = b"\x89PSQ\r\n\x1a\n"  # 0x89 catches 7-bit transfers, CR LF / ^Z / LF catch text-mode mangling
MAJOR, MINOR = 1, 0
EXTENSION = ".psq"
MAX_RANK = 6

# Fields in file order, as (name, struct code): FORMAT.md's "Header" and "Tensor record".
HEADER_FIELDS = (
    ("magic", "8s"), ("major", "H"), ("minor", "H"), ("flags", "I"), ("n_tensors", "I"), ("meta_len", "I"),
    ("file_len", "Q"), ("names_len", "I"), ("meta_crc", "I"), ("table_crc", "I"), ("header_crc", "I"),
)
RECORD_FIELDS = (
    ("name_off", "I"), ("name_len", "H"), ("rank", "B"), ("kind", "B"), ("dtype", "B"), ("store", "B"),
    ("bits", "B"), ("encoding", "B"), ("scale_count", "I"), ("golomb_m", "I"), ("unary_bits", "I"),
    ("dims", f"{MAX_RANK}I"), ("nnz", "Q"), ("data_off", "Q"), ("data_len", "Q"), ("index_len", "Q"),
    ("data_crc", "I"), ("block", "I"),
)


def _offsets(fields) -> dict:
    """``{name: byte offset}`` of fields laid out back to back (``<``: no padding)."""
    out, at = {}, 0
    for name, code in fields:
        out[name] = at
        at += struct.calcsize("<" + code)
    return out


HEADER = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS))  # "<8sHHIIIQIIII"
HEADER_OFFSETS = _offsets(HEADER_FIELDS)  # where each header field starts: the offset an error names
HEADER_CRC_SPAN = HEADER_OFFSETS["header_crc"]  # header_crc covers bytes [0, 44)
RECORD = struct.Struct("<" + "".join(code for _, code in RECORD_FIELDS))  # "<IHBBBBBBIII6IQQQQII"
RECORD_OFFSETS = _offsets(RECORD_FIELDS)  # from the record's start; an error adds the record's offset

ALIGN = 8  # data blocks start on 8-byte boundaries so f32/i64 payloads can be viewed in place
MAX_META = 65536  # bytes of the JSON metadata blob
MAX_NAME = 1024  # bytes of one UTF-8 tensor name
MAX_NUMEL = 1 << 28  # default reader cap on the summed element count of all tensors (1 GiB as f32)
MAX_FLOAT32 = 3.4028234663852886e38  # FLT_MAX

# Header ``flags``: required features (FORMAT.md, "Header"). A file sets a bit only when one of
# its records uses the feature, so files without it keep their v1.0 bytes.
FLAG_BLOCK = 1 << 0  # some QUANT record has encoding BLOCK
FLAG_SCALES16 = 1 << 1  # some QUANT record stores its scales in 16 bits (store 2 or 3)
KNOWN_FLAGS = FLAG_BLOCK | FLAG_SCALES16  # a reader rejects any other set bit
MIN_BLOCK, MAX_BLOCK = 2, 256  # a BLOCK record's ``block`` width
BLOCK_WIDTHS = (4, 8, 16, 32)  # the widths the writer tries (FORMAT.md, "Writer rules")


class Kind(IntEnum):
    """A record's ``kind``: how its data block holds the tensor."""

    RAW = 0  # passthrough: numel values of ``store``
    QUANT = 1  # integer levels on a grid: scales | index | values


class Encoding(IntEnum):
    """A QUANT record's ``encoding``: how its index says where the nonzero levels are."""

    DENSE = 0  # no index: every level is stored
    BITMASK = 1  # one bit per element
    GOLOMB = 2  # Golomb-coded gaps between nonzero positions
    BLOCK = 3  # one bit per block of ``block`` consecutive elements of a row (flag FLAG_BLOCK)


class Dtype(IntEnum):
    """A record's ``dtype`` (the state dict's) and, for a RAW record, its ``store`` (what is on disk)."""

    FLOAT32 = 1
    FLOAT16 = 2
    BFLOAT16 = 3
    FLOAT64 = 4
    INT64 = 5
    INT32 = 6
    INT16 = 7
    INT8 = 8
    UINT8 = 9
    BOOL = 10


QUANT_STORE = 0  # a QUANT record's ``store``: float32 scales (RAW: a Dtype)
# A QUANT record's ``store`` is its scales' storage: 0 float32, or (flag FLAG_SCALES16) the
# Dtype code of a 16-bit float. {store: bytes per scale}.
SCALE_STORES = {QUANT_STORE: 4, Dtype.FLOAT16: 2, Dtype.BFLOAT16: 2}

# Short names for the members, as the encoder and the decoders spell them.
RAW, QUANT = Kind.RAW, Kind.QUANT
DENSE, BITMASK, GOLOMB, BLOCK = Encoding.DENSE, Encoding.BITMASK, Encoding.GOLOMB, Encoding.BLOCK
F32, F16 = Dtype.FLOAT32, Dtype.FLOAT16
KIND_NAMES = {k: k.name.lower() for k in Kind}  # {RAW: "raw", QUANT: "quant"}
ENCODING_NAMES = {e: e.name.lower() for e in Encoding}  # {DENSE: "dense", ...}

# dtype code -> (name, itemsize, struct char). The name is torch's and numpy's; the struct
# char is what the reference decoder unpacks with; bf16 has none (it is widened to f32 by
# a 16-bit shift).
DTYPES = {
    Dtype.FLOAT32: ("float32", 4, "f"),
    Dtype.FLOAT16: ("float16", 2, "e"),
    Dtype.BFLOAT16: ("bfloat16", 2, None),
    Dtype.FLOAT64: ("float64", 8, "d"),
    Dtype.INT64: ("int64", 8, "q"),
    Dtype.INT32: ("int32", 4, "i"),
    Dtype.INT16: ("int16", 2, "h"),
    Dtype.INT8: ("int8", 1, "b"),
    Dtype.UINT8: ("uint8", 1, "B"),
    Dtype.BOOL: ("bool", 1, "?"),
}
DTYPE_CODES = {name: code for code, (name, _, _) in DTYPES.items()}
FLOAT_CODES = (Dtype.FLOAT32, Dtype.FLOAT16, Dtype.BFLOAT16, Dtype.FLOAT64)  # a QUANT record's dtypes


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


def block_grid(shape, block: int) -> tuple[int, int, int]:
    """``(rows, cols, nb)`` of a BLOCK tensor: ``rows = dims[0]`` (1 for rank 0), ``cols =
    numel / rows``, and ``nb = ceil(cols / block)`` blocks per row (the last one narrower
    when ``block`` does not divide ``cols``).

    Example:
        >>> block_grid((3, 10), 4), block_grid((2, 3, 4), 8)
        ((3, 10, 3), (2, 12, 2))
    """
    rows = shape[0] if len(shape) else 1
    cols = math.prod(shape) // rows if rows else 0
    return rows, cols, (cols + block - 1) // block


class Record(NamedTuple):
    """One tensor-table record: its fields in file order (``RECORD_FIELDS``), then what a reader
    knows beside them: the tensor's ``name`` from the name pool, the record's byte ``offset``
    in the file and its ``index`` in the table.

    A field the record's kind does not use is 0, as FORMAT.md requires, so an encoder names
    only the fields it sets. Codes stay the ints that were read: an unknown one is the
    decoder's to reject, and a known one compares equal to its ``Kind``/``Dtype``/``Encoding``.
    ``r["kind"]`` reads a field by name, as the dict records of earlier versions did.

    Example:
        >>> r = Record(rank=2, kind=QUANT, dims=(3, 4, 0, 0, 0, 0), name="w")
        >>> r.shape, r.numel, r.kind == Kind.QUANT, r["name"]
        ((3, 4), 12, True, 'w')
        >>> Record.unpack_from(r.pack(), 0) == r._replace(name="")
        True
    """

    name_off: int = 0
    name_len: int = 0
    rank: int = 0
    kind: int = RAW
    dtype: int = 0
    store: int = 0
    bits: int = 0
    encoding: int = 0
    scale_count: int = 0
    golomb_m: int = 0
    unary_bits: int = 0
    dims: tuple = (0,) * MAX_RANK  # all six; the first ``rank`` are the shape
    nnz: int = 0
    data_off: int = 0
    data_len: int = 0
    index_len: int = 0
    data_crc: int = 0
    block: int = 0
    name: str = ""
    offset: int = 0
    index: int = 0

    @property
    def shape(self) -> tuple:
        """The tensor's shape: the first ``rank`` dims (row-major)."""
        return tuple(self.dims[: self.rank])

    @property
    def numel(self) -> int:
        """The product of the shape (1 for rank 0)."""
        return math.prod(self.shape)

    @classmethod
    def unpack_from(cls, buf, off: int, index: int = 0) -> Record:
        """The record at byte ``off`` of ``buf``, unvalidated; ``name`` is left empty."""
        f = RECORD.unpack_from(buf, off)
        return cls(*f[:_DIMS], f[_DIMS : _DIMS + MAX_RANK], *f[_DIMS + MAX_RANK :], offset=off, index=index)

    def pack(self) -> bytes:
        """The record's 88 bytes."""
        f = tuple.__getitem__(self, slice(len(RECORD_FIELDS)))  # the fields on disk, dims one tuple
        return RECORD.pack(*f[:_DIMS], *f[_DIMS], *f[_DIMS + 1 :])

    def __getitem__(self, key):
        """A field by name (``r["dims"]``); an int or a slice indexes the tuple."""
        if isinstance(key, str):
            if key not in _KEYS:
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)


_DIMS = [name for name, _ in RECORD_FIELDS].index("dims")  # dims is one field of MAX_RANK values
_KEYS = frozenset(Record._fields) | {"shape", "numel"}
if Record._fields[: len(RECORD_FIELDS)] != tuple(name for name, _ in RECORD_FIELDS):
    raise AssertionError("Record's fields must be RECORD_FIELDS, in order")


def flags_of(records) -> int:
    """The header's ``flags``: the bit of each required feature that some record uses, and no other.

    Example:
        >>> flags_of([Record(kind=QUANT, encoding=BLOCK, block=4)]) == FLAG_BLOCK
        True
        >>> flags_of([Record(kind=QUANT, store=Dtype.FLOAT16), Record(kind=RAW, store=F16)])
        2
    """
    flags = 0
    for r in records:
        if r.kind == QUANT and r.encoding == BLOCK:
            flags |= FLAG_BLOCK
        if r.kind == QUANT and r.store != QUANT_STORE:
            flags |= FLAG_SCALES16
    return flags
