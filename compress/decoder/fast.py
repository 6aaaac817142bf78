"""The loader: ``compress.load(path) -> {name: Tensor}``, ready for ``load_state_dict``.

``load`` decodes with the C decoder (``compress.native``, compiled on first use) when it is
available, and otherwise with the vectorized pure-Python path of this module; the two
give bit-identical tensors. What follows describes the pure-Python path.

Header, metadata and table are validated by the reference decoder's own functions (a
few hundred bytes per tensor, so a shared implementation costs nothing and the two
decoders cannot disagree on them); the data blocks are decoded with numpy and torch,
with the same checks as ``reference.decode_tensor`` and no Python loop per element.
Output is bit-identical to the reference decoder's.

Where the time goes: the arithmetic is a few passes over small integers; what costs is
memory touched for the first time (a page fault per 4 KiB, microseconds each) and large
temporaries. So the file is read once into one buffer that numpy and torch view without
copies; all outputs are allocated first (see ``_load``); a quantized tensor's int8 levels
are scattered into one scratch buffer shared by all tensors (a bitmask is unpacked a
chunk at a time, so that it stays in cache), then widened and scaled into the output.

Example:
    >>> import torch, compress
    >>> from compress.export import pack
    >>> _ = pack({"w": torch.tensor([[0.5, 0.0], [0.0, -1.0]])}, "/tmp/fast_doc.psq", bits={"w": 4},
    ...          scales={"w": torch.tensor(0.25)})
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
from compress.format.layout import Dtype

# numpy's view of a stored dtype; bf16 and bool are reinterpreted in _raw
_NUMPY = {Dtype.FLOAT32: np.float32, Dtype.FLOAT16: np.float16, Dtype.BFLOAT16: np.int16,
          Dtype.FLOAT64: np.float64, Dtype.INT64: np.int64, Dtype.INT32: np.int32, Dtype.INT16: np.int16,
          Dtype.INT8: np.int8, Dtype.UINT8: np.uint8, Dtype.BOOL: np.uint8}
_TORCH = {code: getattr(torch, name) for code, (name, _, _) in L.DTYPES.items()}

# Bitmask elements per chunk: large enough that the per-chunk Python overhead (~10 us) is
# small against the work, small enough that the unpacked bits and their positions stay in
# cache and are recycled by malloc rather than faulted in. A multiple of 8 (whole bytes).
CHUNK = 1 << 17


@dataclass
class PackedFile:
    """A validated file: its bytes, metadata and table records (``layout.Record``, see ``reference.read_table``)."""

    path: str
    buf: bytearray
    version: tuple
    metadata: dict
    records: list


def read_file(path, *, max_numel: int = L.MAX_NUMEL) -> PackedFile:
    """Read and validate header, metadata and table; the data blocks are decoded on demand."""
    return _parse(_read(path), max_numel, os.fspath(path))


def from_bytes(buf: bytes, *, max_numel: int = L.MAX_NUMEL, path: str = "<bytes>") -> PackedFile:
    """``read_file`` for a file already in memory (copied: later changes to ``buf`` do not leak in)."""
    return _parse(bytearray(buf), max_numel, path)


def _parse(buf: bytearray, max_numel: int, path: str) -> PackedFile:
    # A private, writable buffer: numpy views of it can be handed to torch without copies or warnings.
    h = ref.read_header(buf)
    meta = ref.read_metadata(buf, h)
    return PackedFile(path, buf, (L.MAJOR, h["minor"]), meta, ref.read_table(buf, h, max_numel))


def _raw(block: np.ndarray, r: L.Record, out: torch.Tensor) -> None:
    store = r.store
    if store == Dtype.BOOL and int(block.max(initial=0)) > 1:
        at = r.data_off + int(np.argmax(block > 1))
        raise FormatError(f"values: bool byte {int(block.max())} at offset {at}")
    arr = block.view(_NUMPY[store])
    if store in L.FLOAT_CODES:
        wide = (arr.view(np.uint16).astype(np.uint32) << 16).view(np.float32) if store == Dtype.BFLOAT16 else arr
        bad = ~np.isfinite(wide)
        if bad.any():
            size = L.DTYPES[store][1]
            raise FormatError(f"values: non-finite {L.DTYPES[store][0]} at offset {r.data_off + size * int(np.argmax(bad))}")
    t = torch.from_numpy(arr)  # a view of the file's buffer, copied (and widened) into out
    out.view(-1).copy_(t.view(torch.bfloat16) if store == Dtype.BFLOAT16 else t)


def _levels(buf: np.ndarray, at: int, count: int, bits: int, sparse: bool) -> np.ndarray:
    """The ``count`` int8 levels of a value stream, checked; for 8 bits a view of ``buf``."""
    need = L.values_len(count, bits)
    q = buf[:count].view(np.int8) if bits == 8 else unpack_levels(buf, count, bits)
    sign = 1 << (bits - 1)
    if sparse:  # one pass: the low bits - 1 bits of a level are all zero only for 0 and -sign
        low = np.bitwise_and(q.view(np.uint8), sign - 1)
        bad = None if np.count_nonzero(low) == count else low == 0
    else:
        bad = q == -sign
        bad = bad if bad.any() else None
    if bad is not None:
        i = int(np.argmax(bad))
        raise FormatError(f"values: level {int(q[i])} not allowed at offset {at + (i * bits >> 3)}")
    used = count * bits
    if used % 8 and int(buf[need - 1]) >> (used % 8):
        raise FormatError(f"values: nonzero pad bits at offset {at + need - 1}")
    return q


def _scales(buf: np.ndarray, at: int, count: int, bits: int, store: int = L.QUANT_STORE) -> np.ndarray:
    size = L.SCALE_STORES[store]
    if store == Dtype.FLOAT16:  # widened exactly, as reference.read_scale
        s = buf[: 2 * count].view("<f2").astype(np.float32)
    elif store == Dtype.BFLOAT16:
        s = (buf[: 2 * count].view("<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        s = buf[: 4 * count].view("<f4").astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are what this check rejects
        ok = (s.astype(np.float64) * ((1 << (bits - 1)) - 1) <= L.MAX_FLOAT32) & (s > 0)  # False for NaN
    if not ok.all():
        i = int(np.argmin(ok))
        raise FormatError(f"scales: scale {float(s[i])!r} is not finite and positive at offset {at + size * i}")
    return s


def _block(index: np.ndarray, values: np.ndarray, r: L.Record, idx_at: int, val_at: int, out: torch.Tensor) -> None:
    """BLOCK: the levels into ``out`` (int8, numel), with reference.decode_tensor's checks."""
    b, bits = r.block, r.bits
    rows, cols, nb = L.block_grid(r.shape, b)
    nbits = rows * nb
    stored = np.unpackbits(index, bitorder="little")[:nbits].view(bool)
    width = np.full(nb, b, dtype=np.int64)
    width[-1] = cols - (nb - 1) * b
    widths = np.where(stored.reshape(rows, nb), width, 0).reshape(-1)
    count = int(widths.sum())
    if L.values_len(count, bits) != values.size:
        raise FormatError(f"index: {int(stored.sum())} stored blocks hold {count} levels, not {values.size} bytes "
                          f"at offset {idx_at}")
    if nbits % 8 and int(index[-1]) >> (nbits % 8):
        raise FormatError(f"index: nonzero pad bits at offset {idx_at + index.size - 1}")
    levels = _levels(values, val_at, count, bits, False)
    keep = stored.reshape(rows, nb)[:, np.arange(cols) // b]  # each element: is its block stored
    q = out.numpy().reshape(rows, cols)
    q[...] = 0
    q[keep] = levels
    grid = np.zeros((rows, nb * b), dtype=bool)
    grid[:, :cols] = q != 0
    empty = stored & ~grid.reshape(rows, nb, b).any(axis=2).reshape(-1)
    if empty.any():
        k = int(widths[: int(np.argmax(empty))].sum())  # the block's first value
        raise FormatError(f"values: stored block holds no nonzero level at offset {val_at + (k * bits >> 3)}")
    if int(np.count_nonzero(levels)) != r.nnz:
        raise ref.record_error(r, "nnz", f"{r.nnz} does not match the stored blocks' levels")


def decode(pf: PackedFile, r: L.Record, *, levels: bool = True, scratch: torch.Tensor | None = None,
           out: torch.Tensor | None = None):
    """One tensor: its values (dtype and shape of the state dict) and int8 levels (None if raw).

    ``levels=False`` skips the levels (``load`` needs only the values); ``scratch`` is an
    int8 tensor to reuse across calls; ``out`` is the result, preallocated (see ``_load``).
    """
    start, n = r.data_off, r.data_len
    if zlib.crc32(memoryview(pf.buf)[start : start + n]) != r.data_crc:  # a view: no copy
        raise FormatError(f"data_crc: checksum mismatch for {r.name!r} at offset {start}")
    block = np.frombuffer(pf.buf, np.uint8, n, start)
    shape = r.shape
    if out is None:
        out = torch.empty(shape, dtype=_TORCH[r.dtype])
    if r.kind == L.RAW:
        _raw(block, r, out)
        return out, None
    numel, bits, nnz, enc, sc = r.numel, r.bits, r.nnz, r.encoding, r.scale_count
    scales = torch.from_numpy(_scales(block, start, sc, bits, r.store))
    idx_at = L.SCALE_STORES[r.store] * sc
    val_at = idx_at + r.index_len
    index, values = block[idx_at:val_at], block[val_at:]
    if scratch is None or scratch.numel() < numel:
        scratch = torch.empty(numel, dtype=torch.int8)
    if enc == L.BLOCK:
        _block(index, values, r, start + idx_at, start + val_at, scratch[:numel])
        return _scaled(scratch[:numel], scales, sc, numel, out, shape, levels)
    stored = _levels(values, start + val_at, numel if enc == L.DENSE else nnz, bits, enc != L.DENSE)
    if enc == L.DENSE and int(np.count_nonzero(stored)) != nnz:
        raise ref.record_error(r, "nnz", f"{nnz} does not match the dense values")
    if enc == L.BITMASK and numel % 8 and int(index[-1]) >> (numel % 8):
        raise FormatError(f"index: nonzero pad bits at offset {start + val_at - 1}")
    if enc == L.GOLOMB:
        where = golomb.decode(index, r.golomb_m, r.unary_bits, nnz, numel, start + idx_at)
    stored = torch.from_numpy(stored)
    if enc == L.DENSE:
        q = stored
    else:
        q = scratch[:numel]
        q.zero_()
        if enc == L.GOLOMB:
            q.scatter_(0, torch.from_numpy(where), stored)
        else:
            v0 = 0
            for e0 in range(0, numel, CHUNK):  # the bitmap is unpacked a chunk at a time: it stays in cache
                e1 = min(numel, e0 + CHUNK)
                bitmap = np.unpackbits(index[e0 >> 3 : (e1 + 7) >> 3], bitorder="little").view(bool)
                pos = bitmap[: e1 - e0].nonzero()[0]  # on bool, nonzero is branch-free
                if v0 + pos.size > nnz:
                    break
                # A scatter by positions (torch's is ~2x numpy's); boolean-mask assignment is ~10x slower.
                q[e0:e1].scatter_(0, torch.from_numpy(pos), stored[v0 : v0 + pos.size])
                v0 += pos.size
            if v0 != nnz:
                raise FormatError(f"index: bitmask popcount differs from nnz {nnz} at offset {start + idx_at}")
    return _scaled(q, scales, sc, numel, out, shape, levels)


def _scaled(q: torch.Tensor, scales: torch.Tensor, sc: int, numel: int, out: torch.Tensor, shape, levels: bool):
    """``out = float32(q) * scale`` per channel, cast to ``out``'s dtype; returns ``(out, levels or None)``."""
    # float32(q) * float32(scale), one rounding, zeros included (0 * s = +0.0, as the reference);
    # widening, then scaling in place is ~2x faster than one mixed-dtype multiply.
    direct = out.dtype == torch.float32
    wide = out.view(sc, -1) if direct else torch.empty((sc, numel // sc))
    wide.copy_(q.view(sc, -1))
    wide.mul_(scales.view(sc, 1))
    if not direct:
        out.view(sc, -1).copy_(wide)  # float32 -> dtype: the reference's cast of the float32 product
    return out, (q.clone().numpy().reshape(shape) if levels else None)


def load(path, *, max_numel: int = L.MAX_NUMEL, native: bool | None = None) -> dict:
    """Decode every tensor of a PSQ file into ``{name: Tensor}`` (state-dict order).

    Args:
        path: the packed file.
        max_numel: reject files whose tensors hold more elements in total (default 2**28).
        native: None (default) decodes with the C decoder when it is available (see
            ``compress.native``: ``COMPRESS_NATIVE=0`` turns it off), else in Python;
            True requires C; False uses the pure-Python path. Both give identical tensors.

    Raises:
        compress.FormatError: the file is malformed; the message names the field and offset.
    """
    return _dispatch(_read(path), max_numel, os.fspath(path), native)


def load_bytes(buf: bytes, *, max_numel: int = L.MAX_NUMEL, native: bool | None = None) -> dict:
    """``load`` for a file already in memory."""
    return _dispatch(bytearray(buf), max_numel, "<bytes>", native)


def _dispatch(buf: bytearray, max_numel: int, path: str, native: bool | None) -> dict:
    from compress import native as c

    if native is False:
        return _load(_parse(buf, max_numel, path))
    if native is True:
        lib = c.library()
        if lib is None:
            raise c.NativeUnavailable(f"the C decoder is turned off ({c.ENV}=0)")
    else:
        lib = c.library()
    if lib is None:
        return _load(_parse(buf, max_numel, path))
    return c.load_buffer(buf, max_numel, lib)


def _load(pf: PackedFile) -> dict:
    # Every output is allocated before any decoding: freeing a large temporary first would let
    # malloc return the heap's free memory to the OS, and the outputs would then fault in fresh
    # pages (a few microseconds per 4 KiB, more than decoding them). Nothing is written yet, so
    # this costs nothing on memory that the cap on numel (read_table) does not already allow.
    outs = [torch.empty(r.shape, dtype=_TORCH[r.dtype]) for r in pf.records]
    size = max((r.numel for r in pf.records if r.kind == L.QUANT), default=0)
    scratch = torch.empty(size, dtype=torch.int8)  # the levels of every quantized tensor in turn
    return {r.name: decode(pf, r, levels=False, scratch=scratch, out=o)[0] for r, o in zip(pf.records, outs)}


def _read(path) -> bytearray:
    with open(os.fspath(path), "rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        n = f.readinto(buf)  # one read, straight into the buffer that numpy and torch will view
    del buf[n:]  # the file shrank meanwhile: the header's file_len check rejects it
    return buf
