"""``verify``: does a packed file hold a checkpoint's weights, bit for bit?

Every tensor is decoded and compared with what the checkpoint says it should be: a
quantized tensor as ``dequantize(quantize(w))`` on its grid (the checkpoint's scales, or
scales computed as ``pack`` computes them), any other tensor as ``w`` after the file's
storage dtype (float16 where it was packed so). The expectation is rebuilt from the
checkpoint with the grid's own functions, not read back from the writer, so a writer
or decoder bug shows up as a mismatch.

Example:
    >>> from compress.export import verify
    >>> verify("model.psq", "model.ckpt")  # doctest: +SKIP
    []
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from compress.checks import check_choice
from compress.decoder.fast import PackedFile, decode, read_file
from compress.export.sources import resolve
from compress.format import layout as L
from compress.quant import grid

# Why a tensor does not match; ``Mismatch.__str__`` words each as ``compress verify`` prints it,
# FILE being the packed file and CKPT the checkpoint.
Kind = Literal["missing_from_file", "missing_from_checkpoint", "quantized_in_one", "values"]
_REASONS = {"missing_from_file": "in CKPT, missing from FILE", "missing_from_checkpoint": "in FILE, missing from CKPT",
            "quantized_in_one": "quantized in one and not the other"}


class Spec(NamedTuple):
    """A tensor's dtype and shape."""

    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Mismatch:
    """One tensor on which the packed file and the checkpoint disagree.

    ``decoded`` (from the file) and ``expected`` (from the checkpoint) are set for kind
    ``"values"``, where dtype, shape or values differ.
    """

    name: str
    kind: Kind
    decoded: Spec | None = None
    expected: Spec | None = None

    def __str__(self) -> str:
        if self.kind != "values":
            return f"{self.name}: {_REASONS[self.kind]}"
        return (f"{self.name}: decoded values differ (dtype {self.decoded.dtype}/{self.expected.dtype}, "
                f"shape {self.decoded.shape}/{self.expected.shape})")


def verify(file: str | os.PathLike | PackedFile, checkpoint, *, bits: int | None = None, granularity: str = "channel",
           trust_checkpoint: bool = False) -> list[Mismatch]:
    """The tensors on which ``file`` does not hold ``checkpoint``'s weights; empty if it holds them all.

    Args:
        file: a packed file's path, or a ``PackedFile`` already read (``decoder.fast.read_file``).
        checkpoint: a checkpoint path or dict, or a state dict (see ``compress.export.sources``).
        bits, granularity: as given to ``pack`` for a checkpoint without a regularizer state.
        trust_checkpoint: allow pickled objects beyond tensors and plain types.

    Returns:
        Checkpoint tensors missing from the file first, then the file's tensors in its order.

    Raises:
        FormatError: the file is malformed (a decoded block's checksum included).
        ValueError/TypeError: bad settings, or a checkpoint ``pack`` would refuse.
    """
    check_choice("granularity", granularity, grid.GRANULARITIES)
    pf = file if isinstance(file, PackedFile) else read_file(os.fspath(file))
    res = resolve(checkpoint, bits=bits, trust_checkpoint=trust_checkpoint)
    names = {r.name for r in pf.records}
    bad = [Mismatch(n, "missing_from_file") for n in res.state_dict if n not in names]
    for r in pf.records:
        name = r.name
        if name not in res.state_dict:
            bad.append(Mismatch(name, "missing_from_checkpoint"))
            continue
        got, _ = decode(pf, r)
        w = res.state_dict[name].detach().cpu()
        if (r.kind == L.QUANT) != (name in res.bits and w.numel() > 0):  # empty tensors pass through
            bad.append(Mismatch(name, "quantized_in_one"))
            continue
        if got.shape != w.shape:  # before quantizing: the checkpoint's scales may not fit this shape
            bad.append(Mismatch(name, "values", Spec(got.dtype, tuple(got.shape)), Spec(w.dtype, tuple(w.shape))))
            continue
        want = _expected(name, w, r, res, granularity)  # dtype and shape of w
        if got.dtype != want.dtype or not torch.equal(got, want):
            bad.append(Mismatch(name, "values", Spec(got.dtype, tuple(got.shape)), Spec(want.dtype, tuple(want.shape))))
    return bad


def _expected(name: str, w: torch.Tensor, rec: L.Record, res, granularity: str) -> torch.Tensor:
    """What the file should hold for ``name``: the quantized weight, or the passthrough tensor."""
    if rec.kind == L.RAW:
        return w.to(getattr(torch, L.DTYPES[rec.store][0])).to(w.dtype)
    bits = res.bits.get(name, rec.bits)
    s = res.scales.get(name)
    if s is None:
        s = grid.compute_scale(w, bits, granularity)
    return grid.dequantize(grid.quantize(w, s, bits), s).to(w.dtype)
