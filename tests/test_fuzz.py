"""Seeded mutation fuzzing of both decoders: FormatError or an identical success, never anything else.

Half the mutants get their CRCs recomputed, so that mutations reach the structural checks
behind the checksums. CI runs the short form; COMPRESS_FULL=1 runs ten times as many.
"""

import random
import time

import pytest
import torch
from conftest import FULL
from test_decoder_parity import as_tensor, same
from test_format_errors import resign

import compress
from compress.decoder import reference
from compress.export import pack
from compress.format import layout as L
from compress.format.errors import FormatError
from compress.quant import grid

N_FAST, N_REF = (200000, 30000) if FULL else (20000, 3000)
BOUNDARY = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 28, (1 << 28) + 1]


def seeds(tmp_path) -> list:
    """Tiny files covering every encoding (BLOCK with a narrow last block included), bit width
    class, scale granularity and storage (float32, float16, bfloat16) and raw dtype."""
    torch.manual_seed(1)
    files = []
    cases = [(8, 1.0, "channel", None), (4, 0.5, "tensor", None), (3, 0.1, "channel", None), (2, 0.0, "tensor", None),
             (7, 0.02, "tensor", None), (4, 0.5, "channel", 8), (8, 0.3, "tensor", 4), (3, 0.5, "channel", 16),
             (6, 0.5, "channel", None)]
    for i, (bits, d, gran, block) in enumerate(cases):
        keep = torch.rand(6, 40) < d
        if block:  # whole blocks of `block` inputs of a row pruned (the last one narrower for 16)
            keep = (torch.rand(6, (40 + block - 1) // block) < d).repeat_interleave(block, dim=1)[:, :40]
        w = torch.randn(6, 40) * keep * (2.0 ** -20 if i == 7 else 1.0)  # 7: scales below float16's range
        s = grid.compute_scale(w, bits, gran).to(torch.bfloat16).float()  # bfloat16-exact
        if i == 8:  # scales exact in float16 only (bfloat16 keeps 8 significant bits, these need 11)
            s = s.to(torch.float16).float() * (1 + 2 ** -10)
            s = s.to(torch.float16).float()
        sd = {"w": grid.snap(w, s, bits), "b": torch.randn(3), "n": torch.tensor(5), "e": torch.zeros(0)}
        if i == 4:
            sd.update(h=torch.tensor([1.0, -2.0], dtype=torch.bfloat16), f=torch.tensor([True, False]))
        pack(sd, tmp_path / f"s{i}.psq", bits={"w": bits}, scales={"w": s}, scales16=i in (1, 5, 7, 8),
             passthrough_dtype="float16" if i == 2 else "float32")
        files.append((tmp_path / f"s{i}.psq").read_bytes())
    return files


def test_seeds_cover_the_new_features(tmp_path):
    records = [compress.decoder.from_bytes(b).records[0] for b in seeds(tmp_path)]
    assert {r.encoding for r in records} == {L.DENSE, L.BITMASK, L.GOLOMB, L.BLOCK}
    assert {r.store for r in records} == {L.QUANT_STORE, L.Dtype.FLOAT16, L.Dtype.BFLOAT16}
    assert any(r.encoding == L.BLOCK and 40 % r.block for r in records)  # a narrow last block


def mutate(buf: bytes, rng: random.Random) -> bytes:
    b = bytearray(buf)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.randrange(9)
        if op in (0, 7, 8) and b:  # flip a bit; ops 7 and 8 aim at the data blocks (the file's tail)
            lo = len(b) // 2 if op else 0
            b[rng.randrange(lo, len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # a boundary byte
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif op == 2 and len(b) >= 4:  # a boundary u32 at a 4-aligned field
            at = rng.randrange(len(b) // 4) * 4
            b[at : at + 4] = (rng.choice(BOUNDARY) & 0xFFFFFFFF).to_bytes(4, "little")
        elif op == 3:  # truncate
            del b[rng.randrange(len(b) + 1) :]
        elif op == 4:  # append
            b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 5 and b:  # delete a run
            at = rng.randrange(len(b))
            del b[at : at + rng.randrange(1, 9)]
        elif op == 6 and b:  # insert a run
            at = rng.randrange(len(b))
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    out = bytes(b)
    return resign(out, fix_len=rng.random() < 0.8) if rng.random() < 0.6 else out


def mutate_block(buf: bytes, rng: random.Random) -> bytes:
    """Flip bits inside the quantized tensor's data block (scales, index, values), then fix
    the CRCs: this drives the Golomb, bitmask and level decoders themselves."""
    pf = compress.decoder.from_bytes(buf)
    r = next(r for r in pf.records if r.kind == L.QUANT)
    b = bytearray(buf)
    for _ in range(rng.choice((1, 1, 2, 4))):
        at = r.data_off + rng.randrange(r.data_len)
        b[at] ^= 1 << rng.randrange(8)
    return resign(bytes(b))


def outcome_fast(buf: bytes):
    try:
        return compress.decoder.load_bytes(buf, max_numel=1 << 16)
    except FormatError as err:
        assert "offset" in str(err), str(err)
        return None


@pytest.mark.slow
@pytest.mark.parametrize("mutator", [mutate, mutate_block])
def test_fuzz_fast_loader(tmp_path, mutator):
    rng = random.Random(1234)
    base = seeds(tmp_path)
    t0, accepted = time.perf_counter(), 0
    for _ in range(N_FAST):
        accepted += outcome_fast(mutator(rng.choice(base), rng)) is not None
    assert accepted < N_FAST  # the mutations did reach the checks
    assert time.perf_counter() - t0 < 120


@pytest.mark.slow
@pytest.mark.parametrize("mutator", [mutate, mutate_block])
def test_fuzz_reference_matches_fast(tmp_path, mutator):
    rng = random.Random(99)
    base = seeds(tmp_path)
    rejected = 0
    for _ in range(N_REF):
        buf = mutator(rng.choice(base), rng)
        fast = outcome_fast(buf)
        try:
            ref = reference.decode_file(buf, max_numel=1 << 16)
        except FormatError as err:
            assert fast is None, f"reference rejected ({err}) what the fast loader accepted"
            rejected += 1
            continue
        assert fast is not None, "fast loader rejected what the reference accepted"
        assert [t["name"] for t in ref["tensors"]] == list(fast)
        for t in ref["tensors"]:
            assert same(as_tensor(t, fast[t["name"]].dtype), fast[t["name"]]), t["name"]
    assert N_REF // 4 < rejected < N_REF
