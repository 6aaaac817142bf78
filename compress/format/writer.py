"""Assemble encoded tensors into the bytes of a PSQ v1 file (see FORMAT.md).

The layout is fully determined by its inputs: header, metadata, table, names, then
each data block at the next 8-byte boundary with zero padding, and nothing after the
last block. ``chunks`` yields the file piece by piece so a writer can stream it.

Example:
    >>> from compress.format.encode import encode_raw
    >>> parts = list(chunks([("b", encode_raw(b"\\0\\0\\x80?", [1], 1, 1))], b"{}"))
    >>> sum(map(len, parts))
    148
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from compress.format import layout as L


def table(entries: list, meta: bytes) -> tuple[bytes, bytes, list]:
    """Header and table+names bytes, and the data blocks in order (with their padding).

    ``entries`` is ``[(name, Encoded), ...]``; each record is placed here: its name in the
    pool, its block at the next 8-byte boundary, the block's length and CRC.
    """
    names = [name.encode("utf-8") for name, _ in entries]
    for (name, _), raw in zip(entries, names):
        if not 1 <= len(raw) <= L.MAX_NAME:
            raise ValueError(f"tensor name must be 1..{L.MAX_NAME} UTF-8 bytes, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError("tensor names must be unique")
    names_len = sum(map(len, names))
    table_end = L.HEADER.size + len(meta) + L.RECORD.size * len(entries) + names_len
    off, records, blocks, name_off = L.align(table_end) if entries else table_end, [], [], 0
    blocks.append(bytes(off - table_end))
    for i, ((_, (record, block)), raw) in enumerate(zip(entries, names)):
        placed = record._replace(name_off=name_off, name_len=len(raw), data_off=off, data_len=len(block),
                                 data_crc=zlib.crc32(block))
        records.append(placed.pack())
        name_off += len(raw)
        end = off + len(block)
        off = L.align(end) if i + 1 < len(entries) else end
        blocks.append(block)
        blocks.append(bytes(off - end))
    body = b"".join(records) + b"".join(names)
    head = L.HEADER.pack(L.MAGIC, L.MAJOR, L.MINOR, L.flags_of([r for _, (r, _) in entries]), len(entries), len(meta),
                         off, names_len,
                         zlib.crc32(meta), zlib.crc32(body), 0)
    head = head[: L.HEADER_CRC_SPAN] + zlib.crc32(head[: L.HEADER_CRC_SPAN]).to_bytes(4, "little")
    return head, body, blocks



def chunks(entries: list, meta: bytes) -> Iterator[bytes]:
    """The file's bytes as a sequence of chunks; ``entries`` is ``[(name, Encoded), ...]``."""
    head, body, blocks = table(entries, meta)
    yield head
    yield meta
    yield body
    for block in blocks:
        if block:
            yield block
