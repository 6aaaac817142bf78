"""Golden bytes of the features behind ``flags``: BLOCK (a narrow last block included) and
16-bit scales (float16 and bfloat16), beside float32 scales, packed to exactly the pinned file."""

import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import torch

from compress.decoder import reference
from compress.export import pack
from compress.format import layout as L

GOLDEN = Path(__file__).parent / "data" / "features.psq"
SHA256 = "3f74db06f9f1d4822df6a34f53ef9354252f591124c6326fa257948f0eafe550"  # regenerate the file with COMPRESS_REGEN_GOLDEN=1 only for a deliberate format or version change


def features_state_dict() -> tuple[dict, dict, dict]:
    blk = np.zeros((4, 20), np.int8)  # 8 bits; blocks of 8: row 0's first, row 1's last (4 wide), row 3's middle
    blk[0, 0:8] = [1, -2, 3, -4, 5, -6, 7, -8]
    blk[1, 16:20] = [127, -127, 9, 10]
    blk[3, 8:16] = [11, 0, 12, 13, 14, 15, 16, 17]
    narrow = np.zeros((2, 37), np.int8)  # 3 bits; blocks of 16: row 0's first two, row 1's last (5 wide)
    narrow[0, :32] = 1
    narrow[1, 32:] = [3, -3, 2, 1, 1]
    tiny = np.array([[1, -2, 3], [0, 5, -6]], np.int8)  # 4 bits, dense
    scales = {"blk.weight": torch.tensor([0.5, 0.25, 1.0, 2.0]),  # exact in float16
              "narrow.weight": torch.tensor(0.1),  # exact in neither: float32
              "tiny.weight": torch.tensor([2.0 ** -30, 3 * 2.0 ** -30])}  # below float16's range: bfloat16
    levels = {"blk.weight": blk, "narrow.weight": narrow, "tiny.weight": tiny}
    sd = {}
    for name, q in levels.items():
        s = scales[name]
        sd[name] = torch.from_numpy(q.astype(np.float32)) * (s.view(-1, 1) if s.dim() else s)
    sd["bias"] = torch.tensor([0.5, -1.0])
    return sd, {name: {"blk.weight": 8, "narrow.weight": 3, "tiny.weight": 4}[name] for name in levels}, scales


def test_golden_bytes(tmp_path):
    sd, bits, scales = features_state_dict()
    summary = pack(sd, tmp_path / "f.psq", bits=bits, scales=scales, recipe="golden", scales16=True)
    data = (tmp_path / "f.psq").read_bytes()
    if os.environ.get("COMPRESS_REGEN_GOLDEN") == "1":
        GOLDEN.write_bytes(data)
    assert data == GOLDEN.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256
    assert [r.encoding for r in summary.rows] == ["block", "block", "dense", "raw"]


def test_golden_fields():
    data = GOLDEN.read_bytes()
    _, major, minor, flags, n = struct.unpack_from("<8sHHII", data)
    assert (major, minor, flags, n) == (1, 0, L.FLAG_BLOCK | L.FLAG_SCALES16, 4)
    (meta_len,) = struct.unpack_from("<I", data, 20)
    recs = [L.Record.unpack_from(data, 48 + meta_len + 88 * i) for i in range(n)]
    blk, narrow, tiny, bias = recs
    assert (blk.encoding, blk.block, blk.store, blk.index_len, blk.nnz) == (3, 8, 2, 2, 19)
    assert (narrow.encoding, narrow.block, narrow.store, narrow.index_len) == (3, 16, 0, 1)
    assert (tiny.encoding, tiny.block, tiny.store) == (0, 0, 3)
    assert (bias.kind, bias.block) == (0, 0)
    # BLOCK, float16 scales: 4 halves, then the 12-bit index (blocks 0, 5, 10), then 20 levels
    b = data[blk.data_off : blk.data_off + blk.data_len]
    assert b[:8] == bytes.fromhex("00380034003c0040")
    assert b[8:10] == bytes([0x21, 0x04])
    assert b[10:] == np.array([1, -2, 3, -4, 5, -6, 7, -8, 127, -127, 9, 10, 11, 0, 12, 13, 14, 15, 16, 17],
                              np.int8).tobytes()
    # BLOCK, float32 scale: the 6-bit index (blocks 0, 1 and 5 of 2 x 3), then 37 3-bit levels
    b = data[narrow.data_off : narrow.data_off + narrow.data_len]
    assert b[:4] == struct.pack("<f", 0.1) and b[4] == 0x23 and len(b) == 4 + 1 + (37 * 3 + 7) // 8
    # DENSE, bfloat16 scales: the high halves of 2^-30 and 3 * 2^-30
    b = data[tiny.data_off : tiny.data_off + tiny.data_len]
    assert b[:4] == bytes([0x80, 0x30, 0x40, 0x31])
    out = {t["name"]: t for t in reference.decode_file(data)["tensors"]}
    sd, _, _ = features_state_dict()
    for name, t in out.items():
        assert torch.equal(torch.tensor(t["values"], dtype=torch.float32).view(sd[name].shape), sd[name]), name
    assert out["tiny.weight"]["scales"] == [2.0 ** -30, 3 * 2.0 ** -30]
