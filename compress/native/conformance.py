"""The conformance corpus of the C decoder: small PSQ files, and what ``psqdump`` must print.

Every encoding (BLOCK included) x bits 2 to 8 x per-tensor and per-channel scales, with
QUANT tensors of each float dtype and RAW tensors of every dtype; the same with 16-bit
scales (float16 and bfloat16); then FORMAT.md's edge cases, then seeded malformed files. The expected output comes from the reference decoder
(``compress.decoder.reference``), the oracle:

    FILE tensor I BYTES CRC32     one line per tensor: CRC-32 of its decoded bytes
    FILE ok N_TENSORS
    FILE error FIELD OFFSET       a malformed file: the field and offset the reference names

Run ``python -m compress.native.conformance DIR`` to write ``DIR/*.psq`` and
``DIR/expected.txt``; on a target, ``psqdump *.psq`` in DIR must print exactly
``expected.txt`` (see docs/porting.md).

Example:
    >>> files = corpus()
    >>> len(files) > 50 and all(name.endswith(".psq") for name, _ in files)
    True
"""

from __future__ import annotations

import io
import os
import random
import re
import sys
import tempfile
import zlib

BITS = range(2, 9)
# density of nonzero levels that makes the writer pick each encoding
# (a bitmask ties a Golomb index with m = 1 when the last element is nonzero, and the tie
# goes to the bitmask; below 1 - 1/bits it also beats dense)
ENCODINGS = {"dense": 1.0, "bitmask": 0.45, "golomb": 0.04}
QUANT_DTYPES = ("float32", "float16", "bfloat16", "float64")
MUTANTS = 300  # seeded malformed files appended to the corpus


def _levels(gen, shape, density: float, bits: int):
    import torch

    n = 1
    for d in shape:
        n *= d
    qmax = (1 << (bits - 1)) - 1
    q = torch.zeros(n, dtype=torch.int8)
    k = n if density >= 1.0 else round(density * n)
    pos = torch.randperm(n, generator=gen)[:k]
    mag = torch.randint(1, qmax + 1, (k,), generator=gen, dtype=torch.int8)
    sign = torch.randint(0, 2, (k,), generator=gen, dtype=torch.int8) * 2 - 1
    q[pos] = mag * sign
    q[pos[:2]] = torch.tensor([qmax, -qmax], dtype=torch.int8)[: min(2, k)]  # both ends of the grid
    if k and density >= 0.3:
        q[n - 1] = -qmax  # the last element nonzero (see ENCODINGS)
    return q.view(shape)


def _block_levels(gen, shape, bits: int, block: int, keep: float = 0.4, fill: float | None = None):
    """Levels whose zeros are whole blocks of ``block`` consecutive elements of a row (the last
    block of a row narrower when ``block`` does not divide it); a stored block's levels are
    nonzero with probability ``fill`` (default: 0.7 below 6 bits, where stored zeros are
    cheap enough for the writer to pick BLOCK, else 1)."""
    import torch

    rows, cols = shape[0], 1
    for d in shape[1:]:
        cols *= d
    nb = (cols + block - 1) // block
    fill = (0.7 if bits < 6 else 1.0) if fill is None else fill
    q = _levels(gen, (rows, nb * block), fill, bits)[:, :cols].clone()
    stored = torch.rand(rows, nb, generator=gen) < keep
    stored[0, 0] = stored[-1, -1] = True  # the first and the (narrow) last block
    q *= stored.repeat_interleave(block, dim=1)[:, :cols].to(torch.int8)
    first = torch.arange(nb) * block
    q[:, first] = torch.where(stored & (q[:, first] == 0), torch.ones_like(q[:, first]), q[:, first])  # never empty
    return q.reshape(shape)


def _scales16(gen, count: int, kind: str):
    """``count`` positive scales exact in float16 (``"f16"``) or only in bfloat16 (``"bf16"``)."""
    import torch

    if kind == "f16":
        return (torch.rand(count, generator=gen) * 0.09 + 0.01).to(torch.float16).float()
    return (torch.rand(count, generator=gen) * 9e-7 + 1e-7).to(torch.bfloat16).float()  # below f16's normals


def _raw_tensors(gen) -> dict:
    """One RAW tensor of every dtype, with awkward values (subnormals, signed zeros, extremes)."""
    import torch

    f = torch.tensor([0.0, -0.0, 1.5, -2.25, 1e-40, 6.0e4, -7.0e-45, 65504.0, 1e-6])
    return {
        "raw.f32": f, "raw.f16": torch.tensor([0.0, -0.0, 6e-8, -65504.0, 0.333], dtype=torch.float16),
        "raw.bf16": torch.tensor([1.0, -0.0, 3.0e38, 1e-38], dtype=torch.bfloat16),
        "raw.f64": torch.tensor([1e-300, -0.0, 1.7e308, 2.0 ** -1074], dtype=torch.float64),
        "raw.i64": torch.tensor([-(2 ** 63), 2 ** 63 - 1, 0, 3]), "raw.i32": torch.tensor([-(2 ** 31), 7], dtype=torch.int32),
        "raw.i16": torch.tensor([-32768, 32767], dtype=torch.int16), "raw.i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "raw.u8": torch.tensor([0, 255, 17], dtype=torch.uint8), "raw.bool": torch.tensor([True, False, True]),
        "raw.rand": torch.randn(3, 5, generator=gen),
    }


def _pack(sd: dict, bits: dict, scales: dict, **kw) -> bytes:
    from compress.export import pack

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.psq")
        pack(sd, path, bits=bits, scales=scales, **kw)
        with open(path, "rb") as f:
            return f.read()


def valid_files() -> list:
    """``(name, bytes)`` of the valid part of the corpus (deterministic)."""
    import torch

    from compress.quant import grid

    gen = torch.Generator().manual_seed(10)
    out = []
    for enc, density in ENCODINGS.items():
        for bits in BITS:
            for gran in ("tensor", "channel"):
                sd, b, sc = {}, {}, {}
                for dt in QUANT_DTYPES:
                    shape = (6, 40) if enc != "golomb" else (8, 96)
                    q = _levels(gen, shape, density, bits)
                    s = (torch.rand(shape[0] if gran == "channel" else (), generator=gen) * 0.09 + 0.01)
                    name = f"q.{dt}"
                    sd[name] = grid.dequantize(q, s).to(getattr(torch, dt))
                    b[name], sc[name] = bits, s
                sd.update(_raw_tensors(gen))
                data = _pack(sd, b, sc, passthrough_dtype="float16" if bits % 2 else "float32")
                out.append((f"{enc}-b{bits}-{gran}.psq", data))
    for bits in BITS:  # BLOCK: block-aligned zeros, a row width that 8 does not divide
        for gran in ("tensor", "channel"):
            sd, b, sc = {}, {}, {}
            for dt in QUANT_DTYPES:
                q = _block_levels(gen, (6, 44), bits, 8)
                s = (torch.rand(6 if gran == "channel" else (), generator=gen) * 0.09 + 0.01)
                name = f"q.{dt}"
                sd[name] = grid.dequantize(q, s).to(getattr(torch, dt))
                b[name], sc[name] = bits, s
            sd.update(_raw_tensors(gen))
            out.append((f"block-b{bits}-{gran}.psq", _pack(sd, b, sc)))
    for kind in ("f16", "bf16"):  # 16-bit scales under every encoding
        for bits in (3, 8):
            for gran in ("tensor", "channel"):
                sd, b, sc = {}, {}, {}
                for enc, density in (*ENCODINGS.items(), ("block", None)):
                    for dt in ("float32", "bfloat16"):
                        shape = (6, 40) if enc != "golomb" else (8, 96)
                        q = _block_levels(gen, shape, bits, 4) if density is None else _levels(gen, shape, density, bits)
                        s = _scales16(gen, shape[0] if gran == "channel" else 1, kind)
                        s = s if gran == "channel" else s.reshape(())
                        name = f"{enc}.{dt}"
                        sd[name] = grid.dequantize(q, s).to(getattr(torch, dt))
                        b[name], sc[name] = bits, s
                out.append((f"scales16-{kind}-b{bits}-{gran}.psq", _pack(sd, b, sc, scales16=True)))
    out += edge_files(gen)
    return out


def edge_files(gen) -> list:
    """FORMAT.md's notes: empty, scalar, all-zero, fully dense, rank 1, dims[0] = 1, rank 6, ..."""
    import torch

    from compress.format.layout import Dtype
    from compress.quant import grid

    out = []

    def add(name, sd, bits, scales, **kw):
        out.append((f"edge-{name}.psq", _pack(sd, bits, scales, **kw)))

    s1 = torch.tensor(0.125)
    add("empty", {"e": torch.zeros(0, 2), "e1": torch.zeros(0), "x": torch.ones(1)}, {}, {})
    add("scalar", {"s": torch.tensor(0.375)}, {"s": 4}, {"s": s1})
    add("all-zero", {"z": torch.zeros(5, 7), "z16": torch.zeros(3, 2, dtype=torch.float16)}, {"z": 3, "z16": 8},
        {"z": s1, "z16": s1})
    q = _levels(gen, (4, 9), 1.0, 5)
    add("fully-dense", {"d": grid.dequantize(q, s1)}, {"d": 5}, {"d": s1})
    s = torch.rand(17, generator=gen) + 0.1
    add("rank1-per-channel", {"v": grid.dequantize(_levels(gen, (17,), 0.6, 6), s)}, {"v": 6}, {"v": s})
    add("dim0-one", {"o": grid.dequantize(_levels(gen, (1, 50), 0.5, 7), torch.tensor([0.3]))}, {"o": 7},
        {"o": torch.tensor([0.3])})
    q6 = _levels(gen, (2, 1, 3, 2, 2, 3), 0.5, 8)
    s6 = torch.rand(2, generator=gen) + 0.01
    add("rank6", {"r": grid.dequantize(q6, s6)}, {"r": 8}, {"r": s6})
    big = torch.tensor(65504.0 / 127)  # float16: products up to the largest half
    add("f16-extremes", {"h": grid.dequantize(_levels(gen, (3, 30), 0.5, 8), big).to(torch.float16)}, {"h": 8},
        {"h": big})
    add("bf16-third", {"b": grid.dequantize(_levels(gen, (4, 64), 0.5, 8), torch.tensor(1.0 / 3)).to(torch.bfloat16)},
        {"b": 8}, {"b": torch.tensor(1.0 / 3)})
    # float32 products rounded into float16 / bfloat16 by the decoder (the writer's grid check
    # would refuse such weights, so these are packed as float32 and the dtype is patched)
    f16, bf16 = Dtype.FLOAT16, Dtype.BFLOAT16
    for name, scale, dtype in (("f16-subnormal", 1e-7, f16), ("f16-overflow", 1000.0, f16),
                               ("f16-ties", 1 + 2 ** -11, f16), ("bf16-ties", 1 + 2 ** -8, bf16),
                               ("bf16-overflow", 2.679e36, bf16)):
        sc = torch.tensor(scale)
        q = _levels(gen, (4, 64), 0.5, 8)
        data = _pack({"w": grid.dequantize(q, sc), "b": torch.ones(2)}, {"w": 8}, {"w": sc})
        out.append((f"edge-{name}.psq", retype(data, 0, dtype)))
    add("long-golomb", {"g": grid.dequantize(_levels(gen, (3, 4000), 0.002, 4), s1)}, {"g": 4}, {"g": s1})
    add("block-rank3", {"k": grid.dequantize(_block_levels(gen, (5, 4, 9), 6, 16), s1)}, {"k": 6}, {"k": s1})
    add("block-32", {"k": grid.dequantize(_block_levels(gen, (3, 200), 8, 32, 0.2), s1)}, {"k": 8}, {"k": s1})
    add("block-one-row", {"k": grid.dequantize(_block_levels(gen, (1, 70), 2, 4, 0.3), s1)}, {"k": 2}, {"k": s1})
    add("scales16-scalar", {"s": torch.tensor(0.375)}, {"s": 4}, {"s": s1}, scales16=True)
    add("scales16-extremes", {"h": grid.dequantize(_levels(gen, (2, 16), 1.0, 8), torch.tensor([2.0 ** -24, 504.0]))},
        {"h": 8}, {"h": torch.tensor([2.0 ** -24, 504.0])}, scales16=True)  # a float16 subnormal scale
    add("scales16-float32", {"w": grid.dequantize(_levels(gen, (2, 16), 0.5, 4), torch.tensor([0.1, 0.2]))},
        {"w": 4}, {"w": torch.tensor([0.1, 0.2])}, scales16=True)  # not exact in 16 bits: flags stay 0
    add("many-tensors", {f"t{i}": torch.full((i % 3 + 1,), float(i)) for i in range(40)}, {}, {})
    add("utf8-names", {"ü.weight": torch.ones(2), "名前": torch.zeros(1)}, {}, {})
    add("metadata-extra", {"x": torch.ones(1)}, {}, {}, metadata={"a": [1, {"b": "\u00e9\t\""}], "z": None})
    add("no-tensors", {}, {}, {})
    return out


def mutants(seeds: list, n: int = MUTANTS, seed: int = 7) -> list:
    """Seeded malformed (or still valid) variants of some corpus files, CRCs mostly re-signed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.choice((1, 1, 2))):
            op = rng.randrange(4)
            if op == 0 and buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            elif op == 1 and len(buf) >= 4:
                at = rng.randrange(len(buf) // 4) * 4
                buf[at : at + 4] = rng.choice((0, 1, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 28)).to_bytes(4, "little")
            elif op == 2:
                del buf[rng.randrange(len(buf) + 1) :]
            elif buf:
                buf[rng.randrange(len(buf) // 2, len(buf))] ^= 1 << rng.randrange(8)  # the data blocks
        data = resign(bytes(buf)) if rng.random() < 0.7 else bytes(buf)
        out.append((f"mutant-{i:04d}.psq", data))
    return out


def retype(buf: bytes, i: int, dtype: int) -> bytes:
    """Set tensor ``i``'s dtype code and recompute the table CRC (a valid file again)."""
    import struct

    from compress.format import layout as L

    b = bytearray(buf)
    (meta_len,) = struct.unpack_from("<I", b, L.HEADER_OFFSETS["meta_len"])
    b[L.HEADER.size + meta_len + L.RECORD.size * i + L.RECORD_OFFSETS["dtype"]] = dtype
    return resign(bytes(b))


def resign(buf: bytes) -> bytes:
    """Recompute the CRCs that the (possibly mutated) fields let us locate."""
    import struct

    from compress.format import layout as L

    H, R = L.HEADER_OFFSETS, L.RECORD_OFFSETS
    b = bytearray(buf)
    if len(b) < L.HEADER.size:
        return bytes(b)
    n, meta_len = struct.unpack_from("<II", b, H["n_tensors"])
    (names_len,) = struct.unpack_from("<I", b, H["names_len"])
    start = L.HEADER.size + meta_len
    if start <= len(b):
        struct.pack_into("<I", b, H["meta_crc"], zlib.crc32(b[L.HEADER.size : start]))
    table_end = start + n * L.RECORD.size + names_len
    if table_end <= len(b):
        for i in range(n):
            at = start + i * L.RECORD.size
            off, length = struct.unpack_from("<QQ", b, at + R["data_off"])  # data_off, data_len
            if off + length <= len(b):
                struct.pack_into("<I", b, at + R["data_crc"], zlib.crc32(b[off : off + length]))
        struct.pack_into("<I", b, H["table_crc"], zlib.crc32(b[start:table_end]))
    struct.pack_into("<I", b, H["header_crc"], zlib.crc32(b[: L.HEADER_CRC_SPAN]))
    return bytes(b)


def tensor_bytes(t: dict) -> bytes:
    """The reference decoder's tensor as the bytes the C decoder writes (native little-endian)."""
    import torch

    dtype = getattr(torch, t["dtype"])
    if t["kind"] == "quant":
        x = torch.tensor(t["values"], dtype=torch.float32).to(dtype)  # values are already in dtype
    else:
        x = torch.tensor(t["values"], dtype=dtype) if t["values"] else torch.zeros(0, dtype=dtype)
    if dtype == torch.bfloat16:
        x = x.view(torch.int16)
    return x.numpy().tobytes()


_OFFSET = re.compile(r"at offset (\d+)")


def expected(name: str, buf: bytes, max_numel: int | None = None) -> list:
    """psqdump's lines for one file, from the reference decoder."""
    from compress.decoder import reference
    from compress.format import layout as L
    from compress.format.errors import FormatError

    try:
        out = reference.decode_file(buf, max_numel=L.MAX_NUMEL if max_numel is None else max_numel)
    except FormatError as err:
        msg = str(err)
        return [f"{name} error {msg.split(':', 1)[0]} {_OFFSET.findall(msg)[-1]}"]
    lines = []
    for i, t in enumerate(out["tensors"]):
        data = tensor_bytes(t)
        lines.append(f"{name} tensor {i} {len(data)} {zlib.crc32(data):08x}")
    return lines + [f"{name} ok {len(out['tensors'])}"]


def corpus() -> list:
    """The whole corpus: valid files, then seeded mutants whose verdict does not rest on the
    metadata's canonical form (that check is the host's, see FORMAT.md)."""
    files = valid_files()
    picks = [data for name, data in files if name.startswith(("bitmask-b8", "golomb-b4", "dense-b3", "edge-rank6",
                                                                "block-b4", "scales16-bf16-b3", "edge-block-32"))]
    extra = []
    for name, data in mutants(picks):
        lines = expected(name, data)
        if not lines[0].split()[1:3] == ["error", "metadata"]:
            extra.append((name, data))
    return files + extra


def write(directory: str) -> list:
    """Write the corpus and ``expected.txt`` into ``directory``; returns the file names."""
    os.makedirs(directory, exist_ok=True)
    names, text = [], io.StringIO()
    for name, data in sorted(corpus()):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        names.append(name)
        text.write("\n".join(expected(name, data)) + "\n")
    with open(os.path.join(directory, "expected.txt"), "w") as f:
        f.write(text.getvalue())
    return names


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m compress.native.conformance DIR", file=sys.stderr)
        return 2
    names = write(argv[0])
    print(f"wrote {len(names)} files and expected.txt to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
