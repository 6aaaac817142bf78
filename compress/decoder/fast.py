"""The vectorized loader: ``compress.load(path) -> {name: Tensor}``, ready for ``load_state_dict``.

Header, metadata and table are validated by the reference decoder's own functions (a
few hundred bytes per tensor, so a shared implementation costs nothing and the two
decoders cannot disagree on them); the data blocks are decoded with numpy, with the
same checks as ``reference.decode_tensor`` and no Python loop per element. Output is
bit-identical to the reference decoder's.

Example:
    >>> import torch, compress
    >>> from compress.export import pack
    >>> _ = pack({"w": torch.tensor([[0.5, 0.0], [0.0, -1.0]])}, "/tmp/fast_doc.psq", bits=4)
    >>> compress.load("/tmp/fast_doc.psq")["w"]
    tensor([[ 0.5000,  0.0000],
            [ 0.0000, -1.0000]])
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from compress.decoder import reference as ref
from compress.format import golomb
from compress.format import layout as L
from compress.format.bitpack import unpack_levels
from compress.format.errors import FormatError

_NUMPY = {1: np.float32, 2: np.float16, 4: np.float64, 5: np.int64, 6: np.int32, 7: np.int16,
          8: np.int8, 9: np.uint8, 3: np.int16, 10: np.uint8}  # bf16 and bool are reinterpreted below
_TORCH = {code: getattr(torch, name) for code, (name, _, _) in L.DTYPES.items()}


@dataclass
class PackedFile:
    """A validated file: its bytes, metadata and table records (see ``reference.read_table``)."""

    path: str
    buf: bytes
    version: tuple
    metadata: dict
    records: list


def read_file(path, *, max_numel: int = L.MAX_NUMEL) -> PackedFile:
    """Read and validate header, metadata and table; the data blocks are decoded on demand."""
    return from_bytes(_read(path), max_numel=max_numel, path=os.fspath(path))


def from_bytes(buf: bytes, *, max_numel: int = L.MAX_NUMEL, path: str = "<bytes>") -> PackedFile:
    """``read_file`` for a file already in memory."""
    buf = bytes(buf)
    h = ref.read_header(buf)
    meta = ref.read_metadata(buf, h)
    return PackedFile(path, buf, (L.MAJOR, h["minor"]), meta, ref.read_table(buf, h, max_numel))


def _raw(block: np.ndarray, r: dict) -> torch.Tensor:
    store = r["store"]
    if store == 10 and int(block.max(initial=0)) > 1:
        at = r["data_off"] + int(np.argmax(block > 1))
        raise FormatError(f"values: bool byte {int(block.max())} at offset {at}")
    arr = block.view(_NUMPY[store]).copy()  # copy: the tensor must not pin the file's buffer
    if store in L.FLOAT_CODES:
        wide = (arr.view(np.uint16).astype(np.uint32) << 16).view(np.float32) if store == 3 else arr
        bad = ~np.isfinite(wide)
        if bad.any():
            size = L.DTYPES[store][1]
            raise FormatError(f"values: non-finite {L.DTYPES[store][0]} at offset {r['data_off'] + size * int(np.argmax(bad))}")
    t = torch.from_numpy(arr)
    if store == 3:
        t = t.view(torch.bfloat16)
    elif store == 10:
        t = t.to(torch.bool)
    return t.to(_TORCH[r["dtype"]])


def _levels(buf: np.ndarray, at: int, count: int, bits: int, sparse: bool) -> np.ndarray:
    need = L.values_len(count, bits)
    q = unpack_levels(buf, count, bits)
    sign = 1 << (bits - 1)
    bad = (q == -sign) | (q == 0) if sparse else q == -sign
    if bad.any():
        i = int(np.argmax(bad))
        raise FormatError(f"values: level {int(q[i])} not allowed at offset {at + (i * bits >> 3)}")
    used = count * bits
    if used % 8 and int(buf[need - 1]) >> (used % 8):
        raise FormatError(f"values: nonzero pad bits at offset {at + need - 1}")
    return q


def _scales(buf: np.ndarray, at: int, count: int, bits: int) -> np.ndarray:
    s = buf[: 4 * count].view("<f4").astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are what this check rejects
        ok = (s.astype(np.float64) * ((1 << (bits - 1)) - 1) <= L.MAX_FLOAT32) & (s > 0)  # False for NaN
    if not ok.all():
        i = int(np.argmin(ok))
        raise FormatError(f"scales: scale {float(s[i])!r} is not finite and positive at offset {at + 4 * i}")
    return s


def decode(pf: PackedFile, r: dict) -> tuple[torch.Tensor, np.ndarray | None]:
    """One tensor: its values (dtype and shape of the state dict) and int8 levels (None if raw).

    Sparse levels are scattered into a dense int8 array and scaled in one dense pass: fewer
    and smaller temporaries than scaling the nonzeros first, which is what dominates here
    (fresh pages of large temporaries cost more than the arithmetic).
    """
    start, end = r["data_off"], r["data_off"] + r["data_len"]
    if zlib.crc32(pf.buf[start:end]) != r["data_crc"]:
        raise FormatError(f"data_crc: checksum mismatch for {r['name']!r} at offset {start}")
    block = np.frombuffer(pf.buf, np.uint8, r["data_len"], start)
    shape = tuple(r["dims"][: r["rank"]])
    if r["kind"] == L.RAW:
        return _raw(block, r).reshape(shape), None
    numel, bits, nnz, enc, sc = r["numel"], r["bits"], r["nnz"], r["encoding"], r["scale_count"]
    scales = _scales(block, start, sc, bits)
    idx_at, val_at = 4 * sc, 4 * sc + r["index_len"]
    index, values = block[idx_at:val_at], block[val_at:]
    if enc == L.DENSE:
        q = _levels(values, start + val_at, numel, bits, False)
        if int(np.count_nonzero(q)) != nnz:
            raise FormatError(f"nnz: {nnz} does not match the dense values at offset {r['offset'] + 48}")
    else:
        if enc == L.BITMASK:
            # Positions of a *bool* view: nonzero on bool is branch-free and ~10x faster than
            # on uint8, and a scatter by positions beats boolean-mask assignment at d = 0.5.
            where = np.flatnonzero(np.unpackbits(index, count=numel, bitorder="little").view(bool))
            if where.size != nnz:
                raise FormatError(f"index: bitmask popcount differs from nnz {nnz} at offset {start + idx_at}")
            if numel % 8 and int(index[-1]) >> (numel % 8):
                raise FormatError(f"index: nonzero pad bits at offset {start + val_at - 1}")
        else:
            where = golomb.decode(index, r["golomb_m"], r["unary_bits"], nnz, numel, start + idx_at)
        stored = _levels(values, start + val_at, nnz, bits, True)
        q = np.zeros(numel, dtype=np.int8)  # numel is capped by read_table before this allocation
        q[where] = stored
    # One float32 multiply per element, zeros included (0 * s = +0.0, as the reference).
    out = torch.mul(torch.from_numpy(q).view(sc, -1), torch.from_numpy(scales).view(sc, 1))  # (C, numel / C)
    return out.view(shape).to(_TORCH[r["dtype"]]), q.reshape(shape)


def load(path, *, max_numel: int = L.MAX_NUMEL) -> dict:
    """Decode every tensor of a PSQ file into ``{name: Tensor}`` (state-dict order).

    Args:
        path: the packed file.
        max_numel: reject files whose tensors hold more elements in total (default 2**28).

    Raises:
        compress.FormatError: the file is malformed; the message names the field and offset.
    """
    return load_bytes(_read(path), max_numel=max_numel)


def load_bytes(buf: bytes, *, max_numel: int = L.MAX_NUMEL) -> dict:
    """``load`` for a file already in memory."""
    pf = from_bytes(buf, max_numel=max_numel)
    return {r["name"]: decode(pf, r)[0] for r in pf.records}


def _read(path) -> bytes:
    with open(os.fspath(path), "rb") as f:
        return f.read()
