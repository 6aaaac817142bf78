"""The writer: pack a model into a PSQ file (``compress/format/FORMAT.md``), atomically.

Example:
    >>> import torch
    >>> from compress.export import pack
    >>> w = torch.tensor([[0.0, 0.5], [-0.25, 0.0]])
    >>> summary = pack({"w": w, "b": torch.zeros(2)}, "/tmp/pack_doc.psq", bits=4,
    ...                scales={"w": torch.tensor([0.5 / 7, 0.25 / 7])})
    >>> [(r.name, r.encoding, r.nnz) for r in summary.rows]
    [('w', 'dense', 2), ('b', 'raw', 2)]
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from compress.atomic import write_bytes
from compress.checks import check_bool, check_choice
from compress.export.sources import resolve
from compress.format import layout as L
from compress.format import metadata as M
from compress.format.encode import Encoded, encode_quant, encode_raw
from compress.format.stats import format_table, row
from compress.format.writer import chunks
from compress.quant import grid

PASSTHROUGH = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class PackSummary:
    """What ``pack`` wrote: one ``TensorRow`` per tensor and the file's size in bytes."""

    path: str
    rows: list
    file_bytes: int

    def __str__(self) -> str:
        return format_table(self.rows, self.file_bytes)


def _dtype_code(t: torch.Tensor, name: str) -> int:
    code = L.DTYPE_CODES.get(str(t.dtype).replace("torch.", ""))
    if code is None:
        raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which the format cannot store "
                        f"(supported: {', '.join(L.DTYPE_CODES)})")
    return code


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"tensor {name!r} has NaN or Inf values")


def _check_mask(name: str, t: torch.Tensor, mask) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(t.shape):
        raise ValueError(f"mask for {name!r} must be a bool tensor of shape {tuple(t.shape)}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if bool((t[~mask] != 0).any()):
        raise ValueError(f"tensor {name!r} has nonzero weights where its mask says pruned")


def _scale_for(name: str, w: torch.Tensor, bits: int, scale, granularity: str) -> torch.Tensor:
    if scale is None:
        return grid.compute_scale(w, bits, granularity)
    want = ((), (w.shape[0],)) if w.dim() else ((),)
    if tuple(scale.shape) not in want:
        raise ValueError(f"scale for {name!r} must have shape () or ({w.shape[0] if w.dim() else ''},), "
                         f"got {tuple(scale.shape)}")
    limit = L.MAX_FLOAT32 / grid.qmax(bits)
    if not bool(((scale > 0) & (scale <= limit)).all()):
        raise ValueError(f"scale for {name!r} must be finite, > 0 and <= FLT_MAX/qmax, got min "
                         f"{float(scale.min())} max {float(scale.max())}")
    return scale


def _encode_quant(name: str, t: torch.Tensor, bits: int, scale, granularity: str, scales16: bool = False) -> Encoded:
    if not t.is_floating_point():
        raise TypeError(f"tensor {name!r} is {t.dtype}; only floating tensors can be quantized")
    w = t.detach().to("cpu", torch.float32)
    s = _scale_for(name, w, bits, scale, granularity)
    q = grid.quantize(w, s, bits)
    if scale is not None:  # given scales: the weights must already sit on the grid
        err = (w - grid.dequantize(q, s)).abs()
        tol = 4 * torch.finfo(t.dtype).eps * grid.broadcast_scale(s, w) * q.abs().clamp(min=1)
        if bool((err > tol).any()):
            worst = int(torch.argmax(err - tol))
            raise ValueError(f"tensor {name!r} is not on its {bits}-bit grid: element {worst} is off by "
                             f"{float(err.view(-1)[worst]):.3g} (snap it with compress.quant.grid.snap first)")
    scales = s.reshape(-1).numpy() if s.dim() else s.reshape(1).numpy()
    return encode_quant(q.numpy(), tuple(t.shape), bits, scales, _dtype_code(t, name), scales16=scales16)


def _encode_raw(name: str, t: torch.Tensor, passthrough: torch.dtype) -> Encoded:
    code = _dtype_code(t, name)
    t = t.detach().cpu().contiguous()
    store = code
    if t.dtype == torch.float32 and passthrough == torch.float16:
        t = t.to(torch.float16)
        store = L.F16
        _check_finite(t, f"{name} (as float16)")
    payload = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    if sys.byteorder != "little":  # the format is little-endian; torch tensors are host order
        payload = np.frombuffer(payload, L.DTYPES[store][0]).byteswap().tobytes()
    return encode_raw(payload, tuple(t.shape), code, store)


def pack(source, path, *, callbacks=None, bits=None, targets=None, scales=None, masks=None,
         granularity: str = "channel", passthrough_dtype: str = "float32", recipe: str | None = None,
         metadata: dict | None = None, progress: bool = False, trust_checkpoint: bool = False,
         scales16: bool = True) -> PackSummary:
    """Pack ``source`` into the PSQ file ``path``.

    Args:
        source: a checkpoint path or dict, an ``nn.Module`` (with ``callbacks``), or a
            state dict (with ``bits``); see ``compress.export.sources``.
        path: output file; written atomically (temp file, fsync, ``os.replace``).
        callbacks: the ``QuantizationRegularizer``/``GradualSparsifier`` objects of a module.
        bits: int (for ``targets``, default every floating tensor of rank >= 2) or
            ``{name: bits}``; only for sources without a regularizer state.
        targets: names to quantize with an int ``bits``.
        scales: ``{name: Tensor}`` of shape ``()`` or ``(C,)``; missing ones are computed
            with ``grid.compute_scale`` and the weights snapped to them.
        masks: ``{name: bool Tensor}``; weights outside a mask must be zero.
        granularity: ``"channel"`` or ``"tensor"`` for computed scales.
        passthrough_dtype: ``"float32"`` or ``"float16"`` for unquantized float32 tensors.
        recipe: recipe name recorded in the metadata.
        metadata: extra JSON-serializable provenance, stored under ``"extra"``.
        progress: show a tqdm bar on stderr.
        trust_checkpoint: allow arbitrary pickled objects when loading a checkpoint path.
        scales16: store a tensor's scales in float16 (else bfloat16) when every one of them
            is exact there (FORMAT.md, "Writer rules"); the decoded weights are unchanged.
            The callbacks' grids are bfloat16 values (``grid.compute_scale``), so trained
            models qualify. False writes float32 scales, a file that readers of PSQ 1.0
            without the 16-bit-scale feature can read.

    Returns:
        A ``PackSummary`` (per-tensor bytes, encoding, bits/weight; ``str()`` gives the table).

    Raises:
        ValueError/TypeError: NaN/Inf, off-grid weights, a weight outside its mask, bad settings;
            the message names the tensor.
    """
    check_choice("passthrough_dtype", passthrough_dtype, tuple(PASSTHROUGH))
    check_choice("granularity", granularity, grid.GRANULARITIES)
    check_bool("scales16", scales16)
    res = resolve(source, callbacks=callbacks, bits=bits, targets=targets, scales=scales, masks=masks,
                  trust_checkpoint=trust_checkpoint)
    from compress import __version__

    meta = {"recipe": recipe, "tool": f"compress {__version__}"}
    if res.ptq:
        meta["ptq"] = True
    if metadata:
        meta["extra"] = metadata
    meta_bytes = M.encode(meta)
    items = list(res.state_dict.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="encoding", unit="tensor", file=sys.stderr)
    entries = []
    for name, t in items:
        _check_finite(t, name)
        _check_mask(name, t, res.masks.get(name))
        if name in res.bits and t.numel():  # empty tensors pass through: nothing to quantize
            encoded = _encode_quant(name, t, res.bits[name], res.scales.get(name), granularity, scales16)
        else:
            encoded = _encode_raw(name, t, PASSTHROUGH[passthrough_dtype])
        entries.append((name, encoded))
    path = os.fspath(path)
    size = write_bytes(path, chunks(entries, meta_bytes))
    return PackSummary(path, [row(n, e.record, len(e.block)) for n, e in entries], size)
