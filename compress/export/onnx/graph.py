"""``to_onnx``: one graph, from a model and its compression state to an int8 ``.onnx`` file.

Snap a copy (``snap``), trace it (``trace``), rewrite the float initializers that hold
snapped rows as int8 (``initializers``), check the graph and write it atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
import torch

from compress.atomic import write_bytes
from compress.checks import check_int
from compress.export.onnx.initializers import quantize_initializers
from compress.export.onnx.snap import compressed_weights, snap_model
from compress.export.onnx.trace import trace

# Per-axis DequantizeLinear (a (C,) scale with an ``axis``) exists from opset 13 on.
MIN_OPSET = 13
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`to_onnx` wrote: the file, its size, the size of the same graph with all
    initializers float32 (measured), the int8 initializer names, and the compressed
    parameters not entirely stored as int8 in this graph (unused by it, e.g. the joiner
    in an RNN-T encoder graph, or changed by the exporter; exact either way)."""

    path: str
    size_bytes: int
    fp32_bytes: int
    int8_initializers: tuple[str, ...]
    not_int8: tuple[str, ...]


def to_onnx(model: torch.nn.Module, state, example_inputs: Sequence[torch.Tensor], path: str | os.PathLike, *,
            input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
            dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, prefix: str = "",
            forward=None, opset: int = DEFAULT_OPSET) -> OnnxExport:
    """Export ``model`` with its compressed weights as int8 initializers.

    The graph computes the model whose compressed weights are ``grid.snap(w, scale, bits)``
    (pruned weights 0.0), i.e. what a packed file decodes to. Biases, norms and
    uncompressed weights stay float32.

    Args:
        model: the module to export (not modified).
        state: ``bits``, ``scales`` and optional ``masks`` by parameter name (see
            ``compressed_weights``), e.g. ``sources.read_compression_state(checkpoint)``.
        example_inputs: positional inputs used for tracing.
        path: the ``.onnx`` file, written atomically.
        input_names, output_names: graph input and output names.
        dynamic_axes: ``{name: {axis: symbol}}``, e.g. ``{"features": {0: "B", 1: "T"}}``.
        prefix: what state keys carry in front of ``model``'s parameter names.
        forward: optional ``forward(model, *inputs)`` exported instead of ``model.forward``
            (one RNN-T prediction step, say).
        opset: ONNX opset, >= 13 (per-axis ``DequantizeLinear``).

    Returns:
        An :class:`OnnxExport`.

    Example:
        >>> import os, tempfile
        >>> from compress.quant import grid
        >>> lin = torch.nn.Linear(16, 8)
        >>> state = {"bits": 8, "scales": {"weight": grid.compute_scale(lin.weight, 8)}}
        >>> out = to_onnx(lin, state, (torch.randn(2, 16),), os.path.join(tempfile.mkdtemp(), "m.onnx"))
        >>> out.int8_initializers != () and out.not_int8 == ()
        True
    """
    check_int("opset", opset, min=MIN_OPSET)  # per-axis DequantizeLinear
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be callable as forward(model, *inputs), got {type(forward).__name__}")
    example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(example_inputs, Sequence) or not example_inputs:
        raise ValueError(f"example_inputs must be a non-empty tuple of tensors, got {example_inputs!r:.80}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"path must be a file, got the directory {path!r}")

    snapped = snap_model(model, state, prefix)
    resolved, params = compressed_weights(snapped, state, prefix), dict(snapped.named_parameters())
    weights = {key: (params[name].detach(), scale) for name, (key, _, scale) in resolved.items()}
    fp32 = trace(snapped, example_inputs, forward=forward, input_names=input_names, output_names=output_names,
                 dynamic_axes=dynamic_axes, opset=opset)
    proto = onnx.load_from_string(fp32)
    done, covered = quantize_initializers(proto, weights)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_bytes(path, [data])  # temp file beside path, fsync, os.replace
    partial = tuple(k for k, (w, _) in weights.items() if any((k, r) not in covered for r in range(w.shape[0])))
    return OnnxExport(path, len(data), len(fp32), tuple(done), partial)
