"""Reference decoder == fast loader on random models, and parity with the PyTorch model."""

import math

import pytest
import torch

import compress
from compress.decoder import reference
from compress.export import pack
from compress.quant import grid

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def as_tensor(t: dict, dtype: torch.dtype) -> torch.Tensor:
    """The reference decoder's flat values as a tensor of ``dtype`` (the fast loader's)."""
    if t["kind"] == "quant":
        x = torch.tensor(t["values"], dtype=torch.float32)
    else:
        x = torch.tensor(t["values"], dtype=getattr(torch, t["dtype"]) if t["values"] else dtype)
    return x.to(dtype).reshape(t["shape"])


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality: dtype, shape, values, and the sign of zeros."""
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
        return False
    return a.dtype not in FLOATS or torch.equal(torch.signbit(a), torch.signbit(b))


def assert_decoders_agree(buf: bytes) -> dict:
    fast = compress.decoder.load_bytes(buf)
    ref = reference.decode_file(buf)
    assert [t["name"] for t in ref["tensors"]] == list(fast)
    for t in ref["tensors"]:
        assert same(as_tensor(t, fast[t["name"]].dtype), fast[t["name"]]), t["name"]
    return fast


def random_state_dict(gen: torch.Generator) -> tuple[dict, dict]:
    """A few snapped weights of random shape, bits, density and granularity, plus passthroughs."""
    sd, bits = {}, {}
    for i in range(4):
        shape = tuple(int(d) for d in torch.randint(1, 9, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen))
        b = int(torch.randint(2, 9, (1,), generator=gen))
        d = [0.0, 0.03, 0.3, 0.7, 1.0][int(torch.randint(0, 5, (1,), generator=gen))]
        w = torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < d)
        gran = "channel" if i % 2 else "tensor"
        sd[f"layer{i}.weight"] = grid.snap(w, grid.compute_scale(w, b, gran), b)
        bits[f"layer{i}.weight"] = (b, grid.compute_scale(w, b, gran))
        sd[f"layer{i}.bias"] = torch.randn(shape[0], generator=gen)
    sd["bn.num_batches_tracked"] = torch.tensor(int(torch.randint(0, 1000, (1,), generator=gen)))
    return sd, bits


@pytest.mark.parametrize("seed", range(6))
def test_reference_equals_fast_on_random_models(tmp_path, seed):
    gen = torch.Generator().manual_seed(seed)
    sd, settings = random_state_dict(gen)
    path = tmp_path / "m.psq"
    pack(sd, path, bits={k: b for k, (b, _) in settings.items()}, scales={k: s for k, (_, s) in settings.items()},
         passthrough_dtype="float16" if seed % 2 else "float32")
    fast = assert_decoders_agree(path.read_bytes())
    for k, (b, s) in settings.items():
        assert same(fast[k], grid.dequantize(grid.quantize(sd[k], s, b), s)), k
        assert same(fast[k], sd[k])  # the weights were on their grid: the file gives them back exactly


def pack_block_model(tmp_path, seed: int) -> list:
    """Block-structured zeros (whole runs of b inputs of one output) and bfloat16-exact scales:
    BLOCK and 16-bit scales in every float dtype; C, the pure-Python loader and the reference agree."""
    gen = torch.Generator().manual_seed(100 + seed)
    sd, bits, scales = {}, {}, {}
    for i, dtype in enumerate(FLOATS):
        b = int(torch.randint(2, 9, (1,), generator=gen))
        block = (4, 8, 16, 32)[int(torch.randint(0, 4, (1,), generator=gen))]
        rows, cols = int(torch.randint(1, 9, (1,), generator=gen)), int(torch.randint(block, 3 * block, (1,), generator=gen))
        kept = torch.rand(rows, (cols + block - 1) // block, generator=gen) < 0.3
        w = torch.randn(rows, cols, generator=gen) * kept.repeat_interleave(block, dim=1)[:, :cols]
        s = grid.compute_scale(w, b, "channel" if i % 2 else "tensor").to(torch.bfloat16).float()
        sd[f"w{i}"], bits[f"w{i}"], scales[f"w{i}"] = grid.snap(w, s, b).to(dtype), b, s
    sd["bias"] = torch.randn(3, generator=gen)
    pack(sd, tmp_path / "m.psq", bits=bits, scales=scales, scales16=True)
    buf = (tmp_path / "m.psq").read_bytes()
    records = compress.decoder.from_bytes(buf).records
    assert all(r.store in (2, 3) for r in records if r.kind == 1)
    fast = assert_decoders_agree(buf)
    python = compress.decoder.load_bytes(buf, native=False)
    for k, v in sd.items():
        assert same(fast[k], python[k]), k
        if k in scales:  # the float32 file decodes to the same bits
            assert same(fast[k], grid.dequantize(grid.quantize(v.float(), scales[k], bits[k]), scales[k]).to(v.dtype)), k
    return records


def test_block_sparse_and_16_bit_scales(tmp_path):
    used = {(r.encoding, r.dtype) for seed in range(6) for r in pack_block_model(tmp_path, seed) if r.kind == 1}
    assert {d for e, d in used if e == 3} == {1, 2, 3, 4}  # BLOCK in every float dtype


def test_reference_levels_and_raw_dtypes(tmp_path):
    sd = {"w": torch.tensor([[0.0, 3.0], [-1.0, 0.0]]), "bf": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
          "h": torch.tensor([0.25], dtype=torch.float16), "b": torch.tensor([True, False]),
          "i8": torch.tensor([-3, 4], dtype=torch.int8), "d": torch.tensor([1e-300], dtype=torch.float64)}
    pack(sd, tmp_path / "t.psq", bits={"w": 2}, scales={"w": torch.tensor([3.0, 1.0])})
    buf = (tmp_path / "t.psq").read_bytes()
    ref = {t["name"]: t for t in reference.decode_file(buf)["tensors"]}
    assert ref["w"]["levels"] == [0, 1, -1, 0] and ref["w"]["scales"] == [3.0, 1.0]
    assert ref["b"]["values"] == [True, False] and ref["i8"]["values"] == [-3, 4]
    fast = assert_decoders_agree(buf)
    for k, v in sd.items():
        assert same(fast[k], v), k


class SpeechModel(torch.nn.Module):
    """conv1d front end + BatchNorm + bidirectional LSTM + linear CTC head."""

    def __init__(self, n_mels=20, hidden=24, vocab=12):
        super().__init__()
        self.conv = torch.nn.Conv1d(n_mels, hidden, 5, padding=2)
        self.norm = torch.nn.BatchNorm1d(hidden)
        self.lstm = torch.nn.LSTM(hidden, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(2 * hidden, vocab)

    def forward(self, x):  # (B, n_mels, T)
        h = torch.relu(self.norm(self.conv(x)))  # (B, H, T)
        h, _ = self.lstm(h.transpose(1, 2))  # (B, T, 2H)
        return self.head(h).log_softmax(-1)  # (B, T, vocab)


@pytest.mark.parametrize("bits,sparsity", [(8, 0.0), (4, 0.5), (2, 0.9)])
def test_rebuilt_speech_model_is_bit_identical(tmp_path, bits, sparsity):
    model = SpeechModel().eval()
    model(torch.randn(2, 20, 9))  # BatchNorm stats stay at init in eval; num_batches_tracked is int64
    sd = model.state_dict()
    targets = [k for k, v in sd.items() if v.dim() >= 2]
    scales, snapped = {}, {}
    for k in targets:
        w = sd[k] * (torch.rand(sd[k].shape) >= sparsity)
        scales[k] = grid.compute_scale(w, bits)
        snapped[k] = grid.dequantize(grid.quantize(w, scales[k], bits), scales[k])
    expected = SpeechModel().eval()
    expected.load_state_dict({**sd, **snapped})
    pack({**sd, **snapped}, tmp_path / "m.psq", bits=bits, targets=targets, scales=scales)
    rebuilt = SpeechModel().eval()
    rebuilt.load_state_dict(compress.load(tmp_path / "m.psq"), strict=True)
    x = torch.randn(3, 20, 17)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), expected(x))
    for k, v in rebuilt.state_dict().items():
        assert same(v, expected.state_dict()[k]), k
    assert math.isclose(sum(int((snapped[k] != 0).sum()) for k in targets),
                        sum(int((rebuilt.state_dict()[k] != 0).sum()) for k in targets))
