"""The initializer rewrite: float initializers that hold snapped rows become int8 + ``DequantizeLinear``.

The exporter rewrites weights on the way (LSTM gate order, direction concatenation,
transposes for MatMul, slices of a fused QKV projection), so initializer names no longer
match parameters. Those rewrites only move whole rows (one output channel, one scale):
the match is by *values*, and only where ``int8 * scale`` rebuilds the row bit for bit.
Sub-8-bit levels are widened to int8, the narrowest type every runtime reads.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from compress.quant import grid


def _row_index(weights) -> dict[bytes, list[tuple[str, int, float]]]:
    """``{float32 row bytes: [(key, row, scale), ...]}`` over the snapped weights.

    A row may occur in several weights (an all-zero, pruned channel, say): the first
    one's scale is used, and ``_levels`` checks that it rebuilds the row exactly.
    """
    index = {}
    for key, (w, scale) in weights.items():
        rows = w.detach().to(torch.float32).reshape(w.shape[0], -1).numpy()  # (C, K)
        per_row = scale.expand(w.shape[0]) if scale.dim() == 0 else scale
        for r in range(rows.shape[0]):
            index.setdefault(rows[r].tobytes(), []).append((key, r, float(per_row[r])))
    return index


def _levels(rows: np.ndarray, index) -> tuple[np.ndarray, np.ndarray, list] | None:
    """(int8 levels (N, K), scales (N,), hits) if ``q * scale`` rebuilds ``rows`` bit for bit."""
    hits = [index.get(rows[r].tobytes()) for r in range(rows.shape[0])]
    if any(h is None for h in hits):
        return None
    scales = np.asarray([h[0][2] for h in hits], dtype=np.float32)
    w, s = torch.from_numpy(rows), torch.from_numpy(scales)
    q = grid.quantize(w, s, 8)  # levels of narrower grids are within int8's range too
    return (q.numpy(), scales, hits) if torch.equal(grid.dequantize(q, s), w) else None


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def quantize_initializers(model_proto: onnx.ModelProto, weights) -> tuple[list[str], set[tuple[str, int]]]:
    """Rewrite float initializers that hold snapped rows as int8 + ``DequantizeLinear``.

    Args:
        model_proto: the exported model, changed in place.
        weights: ``{key: (snapped weight, scale)}``.

    Returns:
        The rewritten initializer names and the ``(key, row)`` pairs now stored as int8.

    Example:
        >>> scale = torch.full((4,), 0.05)
        >>> w = grid.snap(torch.randn(4, 3), scale, 8)  # (out, in), as nn.Linear stores it
        >>> x, y = (helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in (("x", [1, 3]), ("y", [1, 4])))
        >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
        ...                       [numpy_helper.from_array(w.T.contiguous().numpy(), "w")])  # (in, out)
        >>> names, rows = quantize_initializers(helper.make_model(g), {"weight": (w, scale)})
        >>> names, len(rows)
        (['w'], 4)
    """
    index = _row_index(weights)
    lengths = {int(np.prod(w.shape[1:])) for w, _ in weights.values()}
    g = model_proto.graph
    taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    kept, new_inits, new_nodes, done, covered = [], [], [], [], set()
    for init in g.initializer:
        arr = np.array(numpy_helper.to_array(init)) if init.data_type == onnx.TensorProto.FLOAT else None
        plan = None
        if arr is not None and arr.ndim >= 2 and arr.size:
            # Rows over axis 0; columns (MatMul weights are stored (in, out)); rows over the
            # leading axes (LSTM W and R are (directions, 4H, in)).
            views = [(arr.reshape(arr.shape[0], -1), 0, False)]
            views += [(np.ascontiguousarray(arr.T), 1, False)] if arr.ndim == 2 else []
            views += [(arr.reshape(-1, int(np.prod(arr.shape[a:]))), 0, True) for a in range(2, arr.ndim)]
            for rows, axis, split in views:
                if rows.shape[1] in lengths and (found := _levels(rows, index)) is not None:
                    plan = (*found, axis, split)
                    break
        if plan is None:
            kept.append(init)
            continue
        q, scales, hits, axis, split = plan
        name, per_tensor = init.name, bool((scales == scales[0]).all())
        reshape = split and not per_tensor  # per-row scales over (directions * 4H) rows
        q = q.T if axis == 1 else (q if reshape else q.reshape(arr.shape))  # (in, out) keeps axis 1
        q_name, s_name = _unique(f"{name}_quantized", taken), _unique(f"{name}_scale", taken)
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(q, dtype=np.int8), q_name))
        new_inits.append(numpy_helper.from_array(scales[:1].reshape(()) if per_tensor else scales, s_name))
        dq_out = _unique(f"{name}_dequantized", taken) if reshape else name
        attrs = {} if per_tensor else {"axis": axis}
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [dq_out], name=f"{name}_dq", **attrs))
        if reshape:  # dequantize 2-D, then restore the initializer's shape
            shape_name = _unique(f"{name}_shape", taken)
            new_inits.append(numpy_helper.from_array(np.asarray(arr.shape, dtype=np.int64), shape_name))
            new_nodes.append(helper.make_node("Reshape", [dq_out, shape_name], [name], name=f"{name}_reshape"))
        done.append(name)
        covered.update((key, r) for h in hits for key, r, _ in h)
    g.ClearField("initializer")
    g.initializer.extend(kept + new_inits)
    inputs = [i for i in g.input if i.name not in set(done)]  # keep_initializers_as_inputs
    g.ClearField("input")
    g.input.extend(inputs)
    nodes = new_nodes + list(g.node)  # the new nodes read initializers only
    g.ClearField("node")
    g.node.extend(nodes)
    return done, covered
