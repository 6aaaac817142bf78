"""Malformed files: every one raises FormatError naming the field and the offset, in both decoders."""

import struct
import zlib

import pytest
import torch

import compress
from compress.decoder import reference
from compress.export import pack
from compress.format import layout as L
from compress.format.errors import FormatError


def resign(buf: bytes, fix_len: bool = False) -> bytes:
    """Recompute every CRC that the (possibly mutated) fields let us locate, so that a
    mutation reaches the structural checks behind the checksums; ``fix_len`` also sets
    ``file_len`` to the real length."""
    b = bytearray(buf)
    if len(b) < L.HEADER.size:
        return bytes(b)
    if fix_len:
        struct.pack_into("<Q", b, 24, len(b))
    n, meta_len = struct.unpack_from("<II", b, 16)
    (names_len,) = struct.unpack_from("<I", b, 32)
    start = L.HEADER.size + meta_len
    struct.pack_into("<I", b, 36, zlib.crc32(b[L.HEADER.size : start]))
    table_end = start + n * L.RECORD.size + names_len
    if table_end <= len(b):
        for i in range(n):
            at = start + i * L.RECORD.size
            off, length = struct.unpack_from("<QQ", b, at + 56)
            if off + length <= len(b):
                struct.pack_into("<I", b, at + 80, zlib.crc32(b[off : off + length]))
        struct.pack_into("<I", b, 40, zlib.crc32(b[start:table_end]))
    struct.pack_into("<I", b, 44, zlib.crc32(b[: L.HEADER_CRC_SPAN]))
    return bytes(b)


def both_reject(buf: bytes, field: str, max_numel: int = L.MAX_NUMEL) -> str:
    with pytest.raises(FormatError) as fast:
        compress.decoder.load_bytes(buf, max_numel=max_numel)
    with pytest.raises(FormatError) as ref:
        reference.decode_file(buf, max_numel=max_numel)
    for err in (fast, ref):
        assert "offset" in str(err.value), str(err.value)
    assert str(ref.value).startswith(field), str(ref.value)
    return str(ref.value)


@pytest.fixture
def tiny(tmp_path) -> bytes:
    w = torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    pack({"w": w, "b": torch.ones(2)}, tmp_path / "t.psq", bits=4,
         scales={"w": torch.tensor([0.5 / 7, 1.0 / 7])})
    return (tmp_path / "t.psq").read_bytes()


def record_at(buf: bytes, i: int = 0) -> int:
    (meta_len,) = struct.unpack_from("<I", buf, 20)
    return L.HEADER.size + meta_len + i * L.RECORD.size


def patch(buf: bytes, fmt: str, off: int, *values) -> bytes:
    b = bytearray(buf)
    struct.pack_into(fmt, b, off, *values)
    return resign(bytes(b))


def test_the_fixture_itself_decodes(tiny):
    assert compress.decoder.load_bytes(tiny)["w"][1, 3] == -1.0


@pytest.mark.parametrize("cut", [0, 7, 47, 48, 60, 200, -1])
def test_truncation(tiny, cut):
    both_reject(tiny[:cut], "header" if 0 <= cut < 48 else "file_len")


def test_bad_magic_newer_major_unknown_flags(tiny):
    assert "offset 0" in both_reject(resign(b"XPSQ" + tiny[4:]), "magic")
    both_reject(patch(tiny, "<H", 8, 2), "major")
    both_reject(patch(tiny, "<I", 12, 1), "flags")
    newer_minor = compress.decoder.load_bytes(patch(tiny, "<H", 10, 7))  # same major, higher minor: readable
    assert torch.equal(newer_minor["b"], torch.ones(2))


def test_bad_checksums(tiny):
    b = bytearray(tiny)
    b[-1] ^= 0x10
    both_reject(bytes(b), "data_crc")
    b = bytearray(tiny)
    b[30] ^= 1
    both_reject(bytes(b), "header_crc")
    b = bytearray(tiny)
    b[50] ^= 1  # metadata byte
    both_reject(resign_header_only(bytes(b)), "meta_crc")


def resign_header_only(buf: bytes) -> bytes:
    b = bytearray(buf)
    struct.pack_into("<I", b, 44, zlib.crc32(b[: L.HEADER_CRC_SPAN]))
    return bytes(b)


def test_lying_sizes(tiny):
    r = record_at(tiny)
    both_reject(patch(tiny, "<Q", 24, len(tiny) + 8), "file_len")
    both_reject(patch(tiny, "<Q", r + 64, 1 << 62), "data_off")  # data_len far past the end
    both_reject(patch(tiny, "<Q", r + 56, 8), "data_off")  # block overlapping the header
    both_reject(patch(tiny, "<I", 16, 1 << 30), "n_tensors")
    both_reject(patch(tiny, "<I", 20, 70000), "meta_len")
    both_reject(patch(tiny, "<Q", r + 48, 9), "nnz")  # more nonzeros than elements


def test_overflowing_dims_and_cap(tiny):
    r = record_at(tiny)
    both_reject(patch(tiny, "<II", r + 24, 0xFFFFFFFF, 0xFFFFFFFF), "dims")
    both_reject(tiny, "dims", max_numel=9)  # 8 + 2 elements exceed a cap of 9
    both_reject(patch(tiny, "<B", r + 6, 7), "rank")


def test_duplicate_names_and_bad_utf8(tiny):
    r0, r1 = record_at(tiny, 0), record_at(tiny, 1)
    names_at = record_at(tiny, 2)
    assert tiny[names_at : names_at + 2] == b"wb"
    dup = bytearray(tiny)
    dup[names_at + 1] = ord("w")
    assert "duplicate" in both_reject(resign(bytes(dup)), "name")
    bad = bytearray(tiny)
    bad[names_at] = 0xFF
    both_reject(resign(bytes(bad)), "name")
    both_reject(patch(tiny, "<I", r1, 0), "name_off")
    both_reject(patch(tiny, "<H", r0 + 4, 0), "name_off")


def test_unknown_codes(tiny):
    r = record_at(tiny)
    both_reject(patch(tiny, "<B", r + 11, 9), "")  # encoding 9: sizes no longer match, or unknown
    both_reject(patch(tiny, "<B", r + 8, 99), "dtype")
    both_reject(patch(tiny, "<B", r + 7, 5), "kind")
    both_reject(patch(tiny, "<B", r + 10, 9), "bits")
    both_reject(patch(tiny, "<I", r + 84, 1), "dtype")  # reserved


def test_values_scales_and_padding(tiny):
    r = record_at(tiny)
    off = struct.unpack_from("<Q", tiny, r + 56)[0]
    both_reject(patch(tiny, "<f", off, float("nan")), "scales")
    both_reject(patch(tiny, "<f", off, -1.0), "scales")
    both_reject(patch(tiny, "<f", off, 3.0e38), "scales")  # 7 * scale overflows float32
    pad = record_at(tiny, 2) + 2  # after the names: zero padding up to the first block
    assert pad < off
    both_reject(patch(tiny, "<B", pad, 1), "padding")
    end = off + struct.unpack_from("<Q", tiny, r + 64)[0]
    assert tiny[end - 1] == 0x97  # levels 7 and -7 as two 4-bit fields, LSB first
    assert "level -8" in both_reject(patch(tiny, "<B", end - 1, 0x87), "values")  # -8 is off the grid
    assert "level 0" in both_reject(patch(tiny, "<B", end - 1, 0x07), "values")  # sparse: no stored zeros


def test_raw_payload_checks(tmp_path):
    pack({"flag": torch.tensor([True]), "x": torch.tensor([1.0])}, tmp_path / "r.psq", bits={})
    buf = (tmp_path / "r.psq").read_bytes()
    off0 = struct.unpack_from("<Q", buf, record_at(buf, 0) + 56)[0]
    off1 = struct.unpack_from("<Q", buf, record_at(buf, 1) + 56)[0]
    both_reject(patch(buf, "<B", off0, 2), "values")
    both_reject(patch(buf, "<f", off1, float("inf")), "values")


def test_metadata_must_be_canonical_json(tiny):
    (meta_len,) = struct.unpack_from("<I", tiny, 20)
    meta = tiny[48 : 48 + meta_len]
    spaced = meta.replace(b":", b" :", 1)[: meta_len]  # same length, not canonical
    assert len(spaced) == meta_len
    both_reject(resign(tiny[:48] + spaced + tiny[48 + meta_len :]), "metadata")
    deep = b"[" * meta_len
    both_reject(resign(tiny[:48] + deep + tiny[48 + meta_len :]), "metadata")
