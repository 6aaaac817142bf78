"""Golden bytes: a tiny hand-built state dict packs to exactly the pinned file."""

import hashlib
import os
import struct
from pathlib import Path

import torch

from compress.decoder import reference
from compress.export import pack
from compress.format import layout as L

GOLDEN = Path(__file__).parent / "data" / "tiny.psq"
SHA256 = "499441f262da906b50134b3602d389097b80bf97d6e0e15c82cc35b43486449d"  # regenerate the file with COMPRESS_REGEN_GOLDEN=1 only for a deliberate format or version change


def tiny_state_dict() -> tuple[dict, dict, dict]:
    """One tensor per encoding, plus fp32, int64 and empty passthroughs."""
    dense = torch.tensor([[1, -2, 3], [4, 5, -6]], dtype=torch.float32) * 0.5  # levels on scale 0.5
    bitmask = torch.tensor([[0, 3, 0, -1], [2, 0, 0, 0]], dtype=torch.float32)  # 8 bits, per channel
    golomb = torch.zeros(1, 64)
    golomb[0, 5], golomb[0, 40] = 0.25, -0.25
    sd = {"fc.weight": dense, "conv.weight": bitmask, "emb.weight": golomb, "fc.bias": torch.tensor([0.5, -1.0]),
          "bn.num_batches_tracked": torch.tensor(3), "empty": torch.zeros(0, 2)}
    bits = {"fc.weight": 4, "conv.weight": 8, "emb.weight": 2}
    scales = {"fc.weight": torch.tensor(0.5), "conv.weight": torch.tensor([1.0, 2.0]), "emb.weight": torch.tensor(0.25)}
    return sd, bits, scales


def test_golden_bytes(tmp_path):
    sd, bits, scales = tiny_state_dict()
    # scales16=False: the PSQ 1.0 bytes, float32 scales (features.psq pins the 16-bit ones)
    summary = pack(sd, tmp_path / "tiny.psq", bits=bits, scales=scales, recipe="golden", scales16=False)
    data = (tmp_path / "tiny.psq").read_bytes()
    if os.environ.get("COMPRESS_REGEN_GOLDEN") == "1":
        GOLDEN.write_bytes(data)
    assert data == GOLDEN.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256
    assert [r.encoding for r in summary.rows] == ["dense", "bitmask", "golomb", "raw", "raw", "raw"]


def test_golden_fields():
    data = GOLDEN.read_bytes()
    assert data[:8] == b"\x89PSQ\r\n\x1a\n"
    magic, major, minor, flags, n, meta_len, file_len, names_len = struct.unpack_from("<8sHHIIIQI", data)
    assert (major, minor, flags, n, file_len) == (1, 0, 0, 6, len(data))
    assert data[48 : 48 + meta_len] == b'{"recipe":"golden","tool":"compress 0.1.0"}'
    out = reference.decode_file(data)
    t = {x["name"]: x for x in out["tensors"]}
    assert t["fc.weight"]["levels"] == [1, -2, 3, 4, 5, -6] and t["fc.weight"]["scales"] == [0.5]
    assert t["conv.weight"]["levels"] == [0, 3, 0, -1, 1, 0, 0, 0]
    assert t["conv.weight"]["values"] == [0.0, 3.0, 0.0, -1.0, 2.0, 0.0, 0.0, 0.0]
    assert t["emb.weight"]["nnz"] == 2 and t["emb.weight"]["levels"][5] == 1 and t["emb.weight"]["levels"][40] == -1
    assert t["bn.num_batches_tracked"]["values"] == [3] and t["bn.num_batches_tracked"]["dtype"] == "int64"
    assert t["empty"]["shape"] == [0, 2] and t["empty"]["values"] == []
    # the dense 4-bit block: one f32 scale, then levels 1,-2,3,4,5,-6 as LSB-first nibbles
    first = L.align(48 + meta_len + 6 * 88 + names_len)
    assert data[first : first + 4] == struct.pack("<f", 0.5)
    assert data[first + 4 : first + 7] == bytes([0xE1, 0x43, 0xA5])
