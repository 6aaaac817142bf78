"""Reference decoder for PSQ v1: pure Python, ``struct`` and integer arithmetic only.

Every function maps one-to-one to a C function of the same name; its docstring gives
the C signature. The code is deliberately plain: an explicit byte cursor, fixed-width
reads, loops and shifts, with every size checked against the buffer before use. Python
integers never overflow, so each place where the C port must use a wider type or an
overflow check is marked ``C:``. CRC-32 is zlib's (``crc32()`` in C).

A table record is a ``layout.Record`` (C: ``psq_record``, one field per member). An error
names the field and the byte offset where it was found; for a header or record field the
offset is the field's own, from ``layout.HEADER_OFFSETS`` and ``layout.RECORD_OFFSETS``
(``header_error``, ``record_error``), so that it is written down once.

Example:
    >>> import torch, compress
    >>> from compress.export import pack
    >>> from compress.decoder import reference
    >>> _ = pack({"w": torch.tensor([[0.5, 0.0], [0.0, -1.0]])}, "/tmp/ref_doc.psq", bits={"w": 4},
    ...          scales={"w": torch.tensor(0.25)})
    >>> out = reference.decode_file(open("/tmp/ref_doc.psq", "rb").read())
    >>> out["tensors"][0]["values"], out["tensors"][0]["levels"]
    ([0.5, 0.0, 0.0, -1.0], [2, 0, 0, -4])
"""

from __future__ import annotations

import struct
import zlib

from compress.format import layout as L
from compress.format.errors import FormatError
from compress.format.metadata import parse as parse_metadata


def header_error(field: str, what: str) -> FormatError:
    """The error for header field ``field``, named at its offset (``HEADER_OFFSETS``).

    C: ``fail(err, code, "field", offset, detail)``; the offsets of psq.c's calls are these.
    """
    return FormatError(f"{field}: {what} at offset {L.HEADER_OFFSETS[field]}")


def record_error(r: L.Record, field: str, what: str) -> FormatError:
    """The error for field ``field`` of record ``r``: at the record's offset plus the field's
    (``RECORD_OFFSETS``), so that a port names the byte it read the bad value from."""
    return FormatError(f"{field}: {what} at offset {r.offset + L.RECORD_OFFSETS[field]}")


def read_uint(buf: bytes, off: int, width: int, field: str) -> int:
    """``uint64_t read_uint(const uint8_t *buf, size_t len, size_t off, int width)``.

    C: check ``off <= len && width <= len - off`` (never ``off + width <= len``, which can wrap).
    """
    if off < 0 or width > len(buf) - off:
        raise FormatError(f"{field}: truncated, needs {width} bytes at offset {off}")
    return int.from_bytes(buf[off : off + width], "little")


def read_header(buf: bytes) -> dict:
    """``int read_header(const uint8_t *buf, size_t len, psq_header *h)``: validate the 48-byte header."""
    if len(buf) < L.HEADER.size:
        raise FormatError(f"header: file is {len(buf)} bytes, needs at least {L.HEADER.size} at offset 0")
    magic, major, minor, flags, n, meta_len, file_len, names_len, meta_crc, table_crc, hcrc = L.HEADER.unpack_from(buf, 0)
    if magic != L.MAGIC:
        raise header_error("magic", f"expected {L.MAGIC!r}, found {magic!r}")
    if zlib.crc32(buf[: L.HEADER_CRC_SPAN]) != hcrc:  # before any other field is trusted
        raise header_error("header_crc", "checksum mismatch")
    if major != L.MAJOR:
        raise header_error("major", f"version {major}.{minor} is not readable by a v{L.MAJOR} reader")
    if flags & ~L.KNOWN_FLAGS:
        raise header_error("flags", f"unknown required features 0x{flags & ~L.KNOWN_FLAGS:08x}")
    if file_len != len(buf):
        raise header_error("file_len", f"header says {file_len} bytes, file has {len(buf)}")
    if meta_len > L.MAX_META:
        raise header_error("meta_len", f"{meta_len} exceeds {L.MAX_META}")
    # C: compute in uint64_t; n <= 2^32 and RECORD.size = 88 cannot overflow it.
    table_end = L.HEADER.size + meta_len + n * L.RECORD.size + names_len
    if table_end > file_len:
        raise header_error("n_tensors", f"table of {n} records and {names_len} name bytes runs past the end")
    return {"n_tensors": n, "meta_len": meta_len, "names_len": names_len, "file_len": file_len,
            "meta_crc": meta_crc, "table_crc": table_crc, "minor": minor, "table_end": table_end, "flags": flags}


def read_metadata(buf: bytes, h: dict) -> dict:
    """``int read_metadata(const uint8_t *buf, const psq_header *h, const char **json, size_t *n)``.

    C: the data does not depend on the metadata; a port may hand the bytes to any JSON parser.
    """
    off = L.HEADER.size
    blob = buf[off : off + h["meta_len"]]
    if zlib.crc32(blob) != h["meta_crc"]:
        raise FormatError(f"meta_crc: checksum mismatch over metadata at offset {off}")
    return parse_metadata(blob, off)


def check_zero(buf: bytes, start: int, end: int, field: str) -> None:
    """``int check_zero(const uint8_t *buf, size_t start, size_t end)``: padding must be zero."""
    for i in range(start, end):
        if buf[i] != 0:
            raise FormatError(f"{field}: nonzero padding byte at offset {i}")


def read_record(buf: bytes, off: int, i: int) -> L.Record:
    """``int read_record(const uint8_t *buf, size_t off, psq_record *r)``: one 88-byte record, unvalidated.

    C: read each field with a fixed-width little-endian load at ``off + RECORD_OFFSETS[field]``.
    """
    return L.Record.unpack_from(buf, off, i)


def check_record(r: L.Record, expect_off: int, file_len: int, flags: int = 0) -> int:
    """``int check_record(const psq_record *r, uint64_t expect_off, uint64_t file_len, uint32_t flags, uint64_t *numel)``.

    Checks every field of one record against the spec and the header's ``flags``; returns
    ``numel``. C: ``numel`` is a product of up to six u32 dims: check each multiply against
    the cap first.
    """
    if r.rank > L.MAX_RANK or any(d != 0 for d in r.dims[r.rank :]):
        raise record_error(r, "rank", f"{r.rank} or its unused dims are invalid")
    numel = 1
    for d in r.dims[: r.rank]:
        numel *= d
        if numel > L.MAX_NUMEL:
            raise record_error(r, "dims", f"element count exceeds {L.MAX_NUMEL}")
    if r.data_off != expect_off or r.data_len > file_len - expect_off:
        raise record_error(r, "data_off", f"block [{r.data_off}, +{r.data_len}) expected at {expect_off}")
    if r.dtype not in L.DTYPES:
        raise record_error(r, "dtype", f"unknown code {r.dtype}")
    if r.kind == L.RAW:
        # float32 may be stored as float16 (the reader widens it back); any other dtype as itself
        ok = r.store == r.dtype or (r.store == L.F16 and r.dtype == L.F32)
        unused = (r.bits, r.encoding, r.scale_count, r.golomb_m, r.unary_bits, r.nnz, r.index_len, r.block)
        if not ok or any(unused):
            raise record_error(r, "store", f"invalid raw record (store {r.store}, unused fields set)")
        if r.data_len != numel * L.DTYPES[r.store][1]:
            raise record_error(r, "data_len", f"{r.data_len} != numel * itemsize")
        return numel
    if r.kind != L.QUANT or r.dtype not in L.FLOAT_CODES or numel == 0:
        raise record_error(r, "kind", f"invalid quantized record (kind {r.kind}, numel {numel})")
    if r.store not in L.SCALE_STORES or (r.store != L.QUANT_STORE and not flags & L.FLAG_SCALES16):
        raise record_error(r, "store", f"scale storage {r.store} unknown or not announced in flags")
    check_quant_fields(r, numel, flags)
    return numel


def check_quant_fields(r: L.Record, numel: int, flags: int = 0) -> None:
    """``int check_quant_fields(const psq_record *r, uint64_t numel, uint32_t flags)``: bits, encoding, sizes."""
    bits, enc, nnz = r.bits, r.encoding, r.nnz
    if not 2 <= bits <= 8:
        raise record_error(r, "bits", f"{bits} not in [2, 8]")
    if r.scale_count not in (1, r.dims[0] if r.rank else 1):  # per tensor, or per output channel
        raise record_error(r, "scale_count", f"{r.scale_count} is neither 1 nor dims[0]")
    if nnz > numel:
        raise record_error(r, "nnz", f"{nnz} exceeds numel {numel}")
    m, ub, ilen = r.golomb_m, r.unary_bits, r.index_len
    if enc not in L.ENCODING_NAMES or (enc == L.BLOCK and not flags & L.FLAG_BLOCK):
        raise record_error(r, "encoding", f"unknown code {enc}")
    if enc == L.BLOCK:  # C: cols = numel / rows, rows = dims[0] >= 1 since numel >= 1
        _, cols, _ = L.block_grid(r.shape, 1)
        if not L.MIN_BLOCK <= r.block <= min(L.MAX_BLOCK, cols):
            raise record_error(r, "block", f"block width {r.block} not in [{L.MIN_BLOCK}, min(256, cols {cols})]")
    elif r.block != 0:
        raise record_error(r, "block", f"{r.block} set for encoding {enc}")
    sbytes = L.SCALE_STORES[r.store] * r.scale_count
    if enc == L.DENSE:
        bad, count = m or ub or ilen, numel
    elif enc == L.BITMASK:
        bad, count = m or ub or ilen != (numel + 7) // 8, nnz
    elif enc == L.GOLOMB:
        w, _ = L.golomb_width(m)
        # C: ub and nnz * w are < 2^31 * 8 here only after this check; use uint64_t.
        bad, count = not 1 <= m <= max(1, numel) or ub < nnz or ub + nnz * w > 8 * ilen, nnz
    else:  # BLOCK: the values' length follows from the index, checked in decode_block_index
        rows, _, nb = L.block_grid(r.shape, r.block)
        bad, count = m or ub or ilen != (rows * nb + 7) // 8, None
    if bad:
        raise record_error(r, "index_len", f"index fields inconsistent for encoding {enc}")
    if count is None:  # C: data_len >= sbytes + ilen first, then the difference
        ok = sbytes + ilen <= r.data_len <= sbytes + ilen + L.values_len(numel, bits)
    else:
        ok = r.data_len == sbytes + ilen + L.values_len(count, bits)
    if not ok:
        raise record_error(r, "data_len", f"{r.data_len} does not match scales + index + values")


def read_table(buf: bytes, h: dict, max_numel: int = L.MAX_NUMEL) -> list:
    """``int read_table(const uint8_t *buf, const psq_header *h, psq_record *out)``: records, names, layout."""
    start = L.HEADER.size + h["meta_len"]
    names_at = start + h["n_tensors"] * L.RECORD.size
    if zlib.crc32(buf[start : h["table_end"]]) != h["table_crc"]:
        raise FormatError(f"table_crc: checksum mismatch over table and names at offset {start}")
    records, seen, name_off, total = [], set(), 0, 0
    expect = L.align(h["table_end"]) if h["n_tensors"] else h["table_end"]
    check_zero(buf, h["table_end"], min(expect, h["file_len"]), "padding")
    for i in range(h["n_tensors"]):
        r = read_record(buf, start + i * L.RECORD.size, i)
        if r.name_off != name_off or not 1 <= r.name_len <= min(L.MAX_NAME, h["names_len"] - name_off):
            raise record_error(r, "name_off", f"name [{r.name_off}, +{r.name_len}) not contiguous")
        at = names_at + name_off
        try:
            name = buf[at : at + r.name_len].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"name: not UTF-8 at offset {at}") from None
        if name in seen:  # C: sort the names, or hash them, to find duplicates
            raise FormatError(f"name: duplicate tensor name {name!r} at offset {at}")
        seen.add(name)
        r = r._replace(name=name)  # C: the name is (names_at + name_off, name_len); no copy
        name_off += r.name_len
        total += check_record(r, expect, h["file_len"], h["flags"])
        if total > max_numel:
            raise record_error(r, "dims", f"total element count exceeds the cap {max_numel}")
        end = expect + r.data_len
        expect = L.align(end) if i + 1 < h["n_tensors"] else end
        check_zero(buf, end, min(expect, h["file_len"]), "padding")
        records.append(r)
    if name_off != h["names_len"] or expect != h["file_len"]:
        raise header_error("file_len", f"layout ends at {expect} (names {name_off}), file is {h['file_len']}")
    check_flags_used(records, h["flags"])
    return records


def check_flags_used(records: list, flags: int) -> None:
    """``int check_flags_used(const psq_record *r, uint32_t n, uint32_t flags)``: every set bit
    of ``flags`` is used by some record (the records already checked that they use only set bits)."""
    used = L.flags_of(records)
    if flags != used:
        raise header_error("flags", f"features 0x{flags & ~used:08x} set but used by no tensor")


def read_bits(buf: bytes, base: int, pos: int, width: int) -> int:
    """``uint32_t read_bits(const uint8_t *buf, size_t base, uint64_t pos, int width)``: LSB-first field.

    Bit ``pos`` of a stream at byte ``base`` is bit ``pos & 7`` of byte ``base + (pos >> 3)``.
    C: callers have checked ``pos + width <= 8 * stream_len``; keep the assert anyway.
    """
    value = 0
    for j in range(width):
        p = pos + j
        value |= ((buf[base + (p >> 3)] >> (p & 7)) & 1) << j
    return value


def check_pad_bits(buf: bytes, base: int, used_bits: int, length: int, field: str) -> None:
    """``int check_pad_bits(const uint8_t *buf, size_t base, uint64_t used_bits, size_t len)``."""
    if (used_bits + 7) // 8 != length:
        raise FormatError(f"{field}: {used_bits} bits do not fill {length} bytes at offset {base}")
    if used_bits % 8 and buf[base + length - 1] >> (used_bits % 8):
        raise FormatError(f"{field}: nonzero pad bits at offset {base + length - 1}")


def read_scale(buf: bytes, at: int, store: int) -> float:
    """``float read_scale(const uint8_t *p, int store)``: one stored scale, widened exactly to float32.

    float16 widens as the IEEE conversion does (C: ``psq_f16_to_f32``); bfloat16 is the high
    half of a float32 (C: ``(uint32_t)h << 16``).
    """
    if store == L.Dtype.FLOAT16:
        return struct.unpack_from("<e", buf, at)[0]
    if store == L.Dtype.BFLOAT16:
        return struct.unpack("<f", struct.pack("<I", read_uint(buf, at, 2, "scales") << 16))[0]
    return struct.unpack_from("<f", buf, at)[0]


def read_scales(buf: bytes, at: int, count: int, bits: int, store: int = L.QUANT_STORE) -> list:
    """``int read_scales(const uint8_t *buf, size_t at, uint32_t count, int bits, int store, float *out)``.

    A scale (after widening) is finite, > 0 and small enough that ``qmax * scale`` is finite
    in float32.
    """
    qmax, size = (1 << (bits - 1)) - 1, L.SCALE_STORES[store]
    out = []
    for i in range(count):
        s = read_scale(buf, at + size * i, store)
        if not 0.0 < s * qmax <= L.MAX_FLOAT32:  # also false for NaN; C: compare in double
            raise FormatError(f"scales: scale {s!r} is not finite and positive at offset {at + size * i}")
        out.append(s)
    return out


def decode_levels(buf: bytes, at: int, count: int, bits: int, sparse: bool) -> list:
    """``int decode_levels(const uint8_t *buf, size_t at, uint64_t count, int bits, int sparse, int8_t *out)``.

    Two's-complement ``bits``-wide fields. ``-2^(bits-1)`` is off the grid; a sparse
    encoding never stores a zero level (its index already says where the zeros are).
    """
    levels, sign = [], 1 << (bits - 1)
    for i in range(count):
        v = read_bits(buf, at, i * bits, bits)
        v = v - (sign << 1) if v & sign else v
        if v == -sign or (sparse and v == 0):
            raise FormatError(f"values: level {v} not allowed at offset {at + (i * bits >> 3)}")
        levels.append(v)
    check_pad_bits(buf, at, count * bits, L.values_len(count, bits), "values")
    return levels


def decode_bitmask(buf: bytes, at: int, numel: int, nnz: int) -> list:
    """``int decode_bitmask(const uint8_t *buf, size_t at, uint64_t numel, uint64_t nnz, uint64_t *pos)``."""
    positions = []
    for i in range(numel):
        if (buf[at + (i >> 3)] >> (i & 7)) & 1:
            positions.append(i)
    if len(positions) != nnz:
        raise FormatError(f"index: bitmask has {len(positions)} set bits, nnz is {nnz} at offset {at}")
    check_pad_bits(buf, at, numel, (numel + 7) // 8, "index")
    return positions


def decode_block_index(buf: bytes, at: int, r: L.Record, vlen: int) -> list:
    """``int decode_block_index(const uint8_t *buf, size_t at, const psq_record *r, uint64_t vlen, uint64_t *count)``.

    BLOCK's bitmask of ``rows * nb`` blocks: returns the stored blocks as ``(first element,
    width)`` in order. Their summed width is the number of values, whose bytes must be the
    ``vlen`` the record leaves for them; then the pad bits. C: no list is needed, only the
    count; the levels are placed block by block while decoding.
    """
    b, ilen = r.block, r.index_len
    rows, cols, nb = L.block_grid(r.shape, b)
    blocks, count = [], 0
    for k in range(rows * nb):
        if (buf[at + (k >> 3)] >> (k & 7)) & 1:
            row, j = divmod(k, nb)
            width = min(b, cols - j * b)
            blocks.append((row * cols + j * b, width))
            count += width
    if L.values_len(count, r.bits) != vlen:
        raise FormatError(f"index: {len(blocks)} stored blocks hold {count} levels, not {vlen} bytes at offset {at}")
    check_pad_bits(buf, at, rows * nb, ilen, "index")
    return blocks


def check_blocks(levels: list, blocks: list, at: int, bits: int) -> None:
    """``int check_blocks(const int8_t *levels, ...)``: every stored block holds a nonzero level.

    ``at`` is the values' offset; the error names the byte of the block's first level.
    """
    k = 0
    for _, width in blocks:
        if not any(levels[k : k + width]):
            raise FormatError(f"values: stored block holds no nonzero level at offset {at + (k * bits >> 3)}")
        k += width


def decode_golomb(buf: bytes, at: int, r: L.Record) -> list:
    """``int decode_golomb(const uint8_t *buf, size_t at, const psq_record *r, uint64_t *pos)``.

    Gap ``g = pos - prev - 1`` (``prev`` starts at -1) is ``q * m + rem``: ``q`` zeros then
    a one in the unary stream, ``rem`` truncated-binary split into a ``w``-bit low field
    and, when ``low >= u``, one extra bit. C: check ``q <= numel`` before ``q * m``.
    """
    m, ub, nnz, numel, ilen = r.golomb_m, r.unary_bits, r.nnz, r.numel, r.index_len
    w, u = L.golomb_width(m)
    ucur, ecur, pos, positions = 0, ub + nnz * w, -1, []
    for i in range(nnz):
        q = 0
        while ucur < ub and not read_bits(buf, at, ucur, 1):  # bounded by ub
            q, ucur = q + 1, ucur + 1
        if ucur >= ub:
            raise FormatError(f"index: unary stream ends inside gap {i} at offset {at}")
        ucur += 1
        low = read_bits(buf, at, ub + i * w, w)
        if low >= u:
            if ecur >= 8 * ilen:
                raise FormatError(f"index: extra bits run past the index at offset {at}")
            low, ecur = ((low << 1) | read_bits(buf, at, ecur, 1)) - u, ecur + 1
        pos += q * m + low + 1
        if pos >= numel:
            raise FormatError(f"index: position {pos} outside {numel} elements at offset {at}")
        positions.append(pos)
    if ucur != ub:
        raise FormatError(f"index: unary stream has {ub - ucur} trailing bits at offset {at}")
    check_pad_bits(buf, at, ecur, ilen, "index")
    return positions


def dequantize_level(q: int, s: float) -> float:
    """``float dequantize_level(int8_t q, float s)``: ``q * s`` rounded once to float32.

    The double product of an int8 and a float32 is exact (31 significant bits), so one
    rounding through ``struct 'f'`` equals C's float multiplication ``(float)q * s``.
    """
    return struct.unpack("<f", struct.pack("<f", q * s))[0]


def f32_to_f16(x: int) -> int:
    """``uint16_t f32_to_f16(uint32_t x)``: float32 bits to binary16 bits, round to nearest, ties to even.

    A magnitude of 65520 or more (halfway past 65504, the largest half) becomes infinity;
    below 2^-14 the result is subnormal, and at or below 2^-25 it is a signed zero.
    """
    sign, ax = (x >> 16) & 0x8000, x & 0x7FFFFFFF
    if ax > 0x7F800000:  # NaN (never in a valid file): stays a quiet NaN
        return sign | 0x7E00 | ((ax >> 13) & 0x3FF)
    if ax >= 0x477FF000:
        return sign | 0x7C00
    if ax >= 0x38800000:  # normal: rebias the exponent, round away 13 mantissa bits
        h, rem = (ax - 0x38000000) >> 13, ax & 0x1FFF
        return sign | (h + (rem > 0x1000 or (rem == 0x1000 and h & 1)))
    if ax < 0x33000000:
        return sign
    e, m = ax >> 23, (ax & 0x7FFFFF) | 0x800000  # subnormal: m * 2^(e - 150) = mant * 2^-24
    shift = 126 - e
    h, rem, half = m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1)
    return sign | (h + (rem > half or (rem == half and h & 1)))


def f32_to_bf16(x: int) -> int:
    """``uint16_t f32_to_bf16(uint32_t x)``: float32 bits to bfloat16 bits, round to nearest, ties to even.

    C: ``x + 0x7FFF + lsb`` is below 2^32 for every finite ``x``; past the largest bfloat16
    the carry reaches the exponent and gives infinity.
    """
    if x & 0x7FFFFFFF > 0x7F800000:
        return (x >> 16) | 0x40
    return (x + 0x7FFF + ((x >> 16) & 1)) >> 16


def cast_value(v: float, dtype: int) -> float:
    """``cast_value``: the float32 result ``v`` in the tensor's dtype (FORMAT.md, "Data block").

    float32 and float64 keep it exactly; float16 and bfloat16 round it to nearest, ties to even
    (the C decoder stores the 16-bit patterns; here they are read back as Python floats).
    """
    if dtype == L.Dtype.FLOAT16:
        return struct.unpack("<e", struct.pack("<H", f32_to_f16(struct.unpack("<I", struct.pack("<f", v))[0])))[0]
    if dtype == L.Dtype.BFLOAT16:
        bits = f32_to_bf16(struct.unpack("<I", struct.pack("<f", v))[0])
        return struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return v


def decode_raw(buf: bytes, r: L.Record) -> list:
    """``int decode_raw(const uint8_t *buf, const psq_record *r, void *out)``: a passthrough tensor.

    C: ``data_off`` is 8-aligned, but the buffer itself may not be: read each value with
    ``memcpy`` into a local (no casts of ``buf + off`` to ``float *``), then fix the byte
    order on a big-endian host.
    """
    name, size, char = L.DTYPES[r.store]
    at, out = r.data_off, []
    for i in range(r.numel):
        if char is None:  # bfloat16: the high half of a float32
            v = struct.unpack("<f", struct.pack("<I", read_uint(buf, at + 2 * i, 2, "values") << 16))[0]
        elif char == "?":
            v = buf[at + i]
            if v > 1:
                raise FormatError(f"values: bool byte {v} at offset {at + i}")
            v = bool(v)
        else:
            (v,) = struct.unpack_from("<" + char, buf, at + size * i)
        if r.store in L.FLOAT_CODES and v - v != 0:  # NaN or +-Inf
            raise FormatError(f"values: non-finite {name} at offset {at + size * i}")
        out.append(v)
    return out


def decode_tensor(buf: bytes, r: L.Record) -> dict:
    """``int decode_tensor(const uint8_t *buf, const psq_record *r, psq_tensor *out)``."""
    if zlib.crc32(buf[r.data_off : r.data_off + r.data_len]) != r.data_crc:
        raise FormatError(f"data_crc: checksum mismatch for {r.name!r} at offset {r.data_off}")
    out = {"name": r.name, "shape": list(r.shape), "dtype": L.DTYPES[r.dtype][0],
           "kind": L.KIND_NAMES[r.kind], "bits": r.bits, "nnz": r.nnz, "scales": None, "levels": None}
    if r.kind == L.RAW:
        out.update(encoding=None, values=decode_raw(buf, r))
        return out
    numel, bits, enc = r.numel, r.bits, r.encoding
    scales = read_scales(buf, r.data_off, r.scale_count, bits, r.store)
    idx_at = r.data_off + L.SCALE_STORES[r.store] * r.scale_count
    val_at = idx_at + r.index_len
    if enc == L.DENSE:
        levels = decode_levels(buf, val_at, numel, bits, False)
        if sum(1 for v in levels if v) != r.nnz:  # the record's nnz is wrong: named at that field
            raise record_error(r, "nnz", f"{r.nnz} does not match the dense values")
    elif enc == L.BLOCK:
        blocks = decode_block_index(buf, idx_at, r, r.data_off + r.data_len - val_at)
        stored = decode_levels(buf, val_at, sum(w for _, w in blocks), bits, False)
        check_blocks(stored, blocks, val_at, bits)
        if sum(1 for v in stored if v) != r.nnz:
            raise record_error(r, "nnz", f"{r.nnz} does not match the stored blocks' levels")
        levels, k = [0] * numel, 0  # C: numel was capped in check_record before this allocation
        for first, width in blocks:
            levels[first : first + width] = stored[k : k + width]
            k += width
    else:
        positions = decode_bitmask(buf, idx_at, numel, r.nnz) if enc == L.BITMASK else decode_golomb(buf, idx_at, r)
        stored = decode_levels(buf, val_at, r.nnz, bits, True)
        levels = [0] * numel  # C: numel was capped in check_record before this allocation
        for p, v in zip(positions, stored):
            levels[p] = v
    per = numel // r.dims[0] if r.scale_count > 1 else numel
    values = [cast_value(dequantize_level(q, scales[i // per]), r.dtype) for i, q in enumerate(levels)]
    out.update(encoding=L.ENCODING_NAMES[enc], scales=scales, levels=levels, values=values)
    return out


def decode_file(buf: bytes, max_numel: int = L.MAX_NUMEL) -> dict:
    """``int decode_file(const uint8_t *buf, size_t len, psq_file *out)``: header, metadata, every tensor."""
    h = read_header(buf)
    meta = read_metadata(buf, h)
    records = read_table(buf, h, max_numel)
    return {"version": (L.MAJOR, h["minor"]), "metadata": meta, "tensors": [decode_tensor(buf, r) for r in records]}
