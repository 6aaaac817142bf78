"""Malformed files: every one raises FormatError naming the field and the offset, in both decoders."""

import struct
import zlib

import numpy as np
import pytest
import torch

import compress
from compress.decoder import reference
from compress.export import pack
from compress.format import layout as L
from compress.format.encode import encode_raw
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
    both_reject(patch(tiny, "<I", r + 84, 1), "block")  # v1.0's reserved: 0 outside BLOCK
    both_reject(patch(tiny, "<I", record_at(tiny, 1) + 84, 4), "store")  # a RAW record: an unused field set
    both_reject(patch(tiny, "<B", r + 11, 3), "encoding")  # BLOCK without its flag
    both_reject(patch(tiny, "<B", r + 9, 2), "store")  # 16-bit scales without their flag


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


# ---------------------------------------------------------------- BLOCK and 16-bit scales


def offset(err: str) -> int:
    return int(err.rsplit("at offset ", 1)[1].split()[0])


def rejects_at(buf: bytes, field: str, at: int) -> None:
    """Both decoders (C when built) name ``field`` at byte ``at``."""
    msg = both_reject(buf, field)
    assert msg.startswith(field + ":") and offset(msg) == at, msg
    with pytest.raises(FormatError) as err:
        compress.decoder.load_bytes(buf)
    assert str(err.value).startswith(field + ":") and offset(str(err.value)) == at, str(err.value)


def block_levels() -> np.ndarray:
    """4 x 20, 8 bits: row 0's first block of 8, row 1's narrow last block (4 wide), row 3's
    middle block with one zero inside; every other block zero."""
    q = np.zeros((4, 20), np.int8)
    q[0, 0:8] = [1, -2, 3, -4, 5, -6, 7, -8]
    q[1, 16:20] = [127, -127, 9, 10]
    q[3, 8:16] = [11, 0, 12, 13, 14, 15, 16, 17]
    return q


@pytest.fixture
def blocked() -> bytes:
    from compress.format.encode import encode_quant
    from compress.format.writer import chunks

    enc = encode_quant(block_levels(), (4, 20), 8, np.array([0.5, 0.25, 1.0, 2.0], np.float32), dtype=1)
    assert (enc.record.encoding, enc.record.block, enc.record.nnz) == (L.BLOCK, 8, 19)
    raw = encode_raw(np.float32([1.5]).tobytes(), (1,), 1, 1)
    return b"".join(chunks([("w", enc), ("b", raw)], b"{}"))


@pytest.fixture
def scaled16() -> bytes:
    from compress.format.encode import encode_quant
    from compress.format.writer import chunks

    q = np.array([[1, 0, -3, 0], [0, 7, 0, 0]], np.int8)
    enc = encode_quant(q, (2, 4), 4, np.array([0.5, 0.375], np.float32), dtype=1, scales16=True)
    assert enc.record.store == L.Dtype.FLOAT16
    return b"".join(chunks([("w", enc)], b"{}"))


def data_at(buf: bytes, i: int = 0) -> int:
    return struct.unpack_from("<Q", buf, record_at(buf, i) + 56)[0]


def test_block_fixture_decodes(blocked):
    out = compress.decoder.load_bytes(blocked)
    want = torch.from_numpy(block_levels().astype(np.float32)) * torch.tensor([0.5, 0.25, 1.0, 2.0]).view(4, 1)
    assert torch.equal(out["w"], want)
    assert struct.unpack_from("<I", blocked, 12) == (L.FLAG_BLOCK,)
    r = record_at(blocked)
    idx = data_at(blocked) + 16  # after four float32 scales
    assert blocked[idx : idx + 2] == bytes([0x21, 0x04])  # blocks 0, 5 and 10 of 3 x 4, LSB first
    assert struct.unpack_from("<I", blocked, r + 84) == (8,)


def test_block_record_checks(blocked):
    r = record_at(blocked)
    rejects_at(patch(blocked, "<I", 12, 0), "encoding", r + 11)  # the flag cleared
    rejects_at(patch(blocked, "<I", 12, L.FLAG_BLOCK | L.FLAG_SCALES16), "flags", 12)  # set but unused
    rejects_at(patch(blocked, "<I", 12, L.FLAG_BLOCK | 0x100), "flags", 12)  # unknown bit
    for width in (0, 1, 21, 257, 0xFFFFFFFF):  # below 2, beyond cols = 20, beyond 256
        rejects_at(patch(blocked, "<I", r + 84, width), "block", r + 84)
    rejects_at(patch(blocked, "<I", r + 84, 4), "index_len", r + 72)  # 5 blocks a row: 20 bits
    rejects_at(patch(blocked, "<I", r + 16, 3), "index_len", r + 72)  # golomb_m set
    n = struct.unpack_from("<Q", blocked, r + 64)[0]
    rejects_at(patch(blocked, "<Q", r + 64, 16 + 1), "data_len", r + 64)  # shorter than scales + index
    assert n == 16 + 2 + 20


def test_block_data_checks(blocked):
    r, at = record_at(blocked), data_at(blocked)
    idx, val = at + 16, at + 18
    rejects_at(patch(blocked, "<B", idx, 0x23), "index", idx)  # a 4th stored block: 8 more levels than stored
    rejects_at(patch(blocked, "<B", idx, 0x01), "index", idx)  # one block fewer
    rejects_at(patch(blocked, "<B", idx + 1, 0x14), "index", idx + 1)  # a pad bit (12 bits used)
    rejects_at(patch(blocked, "<b", val + 3, -128), "values", val + 3)  # off the grid
    zeroed = patch(blocked, "<8b", val + 12, *([0] * 8))  # row 3's block, stored but all zero
    rejects_at(zeroed, "values", val + 12)
    first = patch(blocked, "<8b", val, *([0] * 8))  # the first block: named before the wrong nnz
    rejects_at(first, "values", val)
    rejects_at(patch(blocked, "<Q", r + 48, 18), "nnz", r + 48)
    rejects_at(patch(blocked, "<b", val + 14, 0), "nnz", r + 48)  # a zero more inside a stored block


def test_block_narrow_last_block_pad_bits():
    """3 bits a level: a stored narrow last block leaves the values' pad bits to check."""
    from compress.format.encode import encode_quant
    from compress.format.writer import chunks

    q = np.zeros((2, 37), np.int8)
    q[0, :32] = 1
    q[1, 32:] = [3, -3, 2, 1, 1]  # the last block: 37 - 32 = 5 wide (for b = 16 or 32)
    enc = encode_quant(q, q.shape, 3, np.array([0.25], np.float32), dtype=1)
    assert (enc.record.encoding, enc.record.block) == (L.BLOCK, 16)  # ties 32 (same bytes): the narrower
    buf = b"".join(chunks([("w", enc)], b"{}"))
    assert torch.equal(compress.decoder.load_bytes(buf)["w"], torch.from_numpy(q.astype(np.float32)) * 0.25)
    end = data_at(buf) + struct.unpack_from("<Q", buf, record_at(buf) + 64)[0]
    assert (32 + 5) * 3 % 8 == 7
    rejects_at(patch(buf, "<B", end - 1, buf[end - 1] | 0x80), "values", end - 1)


def test_scales16_checks(scaled16):
    r, at = record_at(scaled16), data_at(scaled16)
    assert struct.unpack_from("<I", scaled16, 12) == (L.FLAG_SCALES16,)
    assert scaled16[at : at + 4] == np.float16([0.5, 0.375]).tobytes()
    rejects_at(patch(scaled16, "<I", 12, 0), "store", r + 9)  # the flag cleared
    rejects_at(patch(scaled16, "<B", r + 9, 4), "store", r + 9)  # not a 16-bit float code
    rejects_at(patch(scaled16, "<B", r + 9, 1), "store", r + 9)  # float32 is 0, not its dtype code
    rejects_at(patch(scaled16, "<I", 12, L.FLAG_SCALES16 | L.FLAG_BLOCK), "flags", 12)
    for bits16 in (0x7C00, 0x7E00, 0xB800, 0x0000, 0x8000):  # inf, NaN, -0.5, +0, -0
        rejects_at(patch(scaled16, "<H", at + 2, bits16), "scales", at + 2)
    as_bf16 = patch(scaled16, "<B", r + 9, L.Dtype.BFLOAT16)
    rejects_at(patch(as_bf16, "<H", at, 0x7F7F), "scales", at)  # 7 * 3.39e38 overflows float32
    ok = compress.decoder.load_bytes(patch(as_bf16, "<HH", at, 0x3F00, 0x3EC0))  # 0.5, 0.375 as bfloat16
    assert torch.equal(ok["w"], compress.decoder.load_bytes(scaled16)["w"])
    small = compress.decoder.load_bytes(patch(scaled16, "<H", at, 0x0001))  # a float16 subnormal: 2^-24
    assert small["w"][0, 0].item() == 2.0 ** -24


def test_older_reader_refuses_each_flag(blocked, scaled16, monkeypatch):
    """A reader that does not know a bit refuses the file at the header, before any record."""
    for buf, bit in ((blocked, L.FLAG_BLOCK), (scaled16, L.FLAG_SCALES16)):
        monkeypatch.setattr(L, "KNOWN_FLAGS", L.KNOWN_FLAGS & ~bit)
        with pytest.raises(FormatError, match="^flags: unknown required features .* at offset 12$"):
            reference.decode_file(buf)
        with pytest.raises(FormatError, match="^flags:"):
            compress.decoder.load_bytes(buf, native=False)
        monkeypatch.undo()
        reference.decode_file(buf)  # and the reader that knows it reads it
