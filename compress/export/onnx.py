"""ONNX export: compressed weights as int8 initializers behind ``DequantizeLinear``.

1. Snap a copy of the model: each compressed weight becomes ``grid.snap(w, scale, bits)``
   (after its mask), so the float graph *is* the quantized model.
2. Export it with the TorchScript exporter, which maps ``nn.LSTM`` onto the ONNX LSTM op
   but rewrites weights on the way (gate order, direction concatenation, transposes for
   MatMul, slices of a fused QKV projection): initializer names no longer match.
3. Rewrite by *values*: those rewrites only move whole rows (one output channel, one
   scale). A float initializer whose rows (or, 2-D, columns) are all rows of snapped
   weights becomes int8 levels + scales + ``DequantizeLinear``, only where ``int8 * scale``
   rebuilds it bit for bit. Everything else (biases, norms) stays float32.

Sub-8-bit levels are widened to int8, the narrowest type every runtime reads.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from compress.atomic import write_bytes
from compress.quant import grid

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


def _field(state, name: str, default=None):
    return state.get(name, default) if isinstance(state, Mapping) else getattr(state, name, default)


def compressed_weights(model: torch.nn.Module, state, prefix: str = "") -> dict[str, tuple[str, int, torch.Tensor]]:
    """Resolve a compression state against ``model``'s parameters.

    Args:
        model: the module to export (a whole LightningModule or one of its submodules).
        state: a ``CompressionState``-like object or a mapping with ``bits`` (an int, or
            ``{fqn: int}``), ``scales`` (``{fqn: Tensor (C,) or ()}``), optional ``masks``.
        prefix: what state keys carry in front of ``model``'s parameter names, e.g.
            ``"encoder."`` to export ``module.encoder``; other keys are ignored.

    Returns:
        ``{parameter name in model: (state key, bits, scale)}``.

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> sorted(compressed_weights(lin, {"bits": 8, "scales": {"weight": torch.ones(3)}}))
        ['weight']
    """
    scales, bits = _field(state, "scales"), _field(state, "bits")
    if not isinstance(scales, Mapping):
        raise TypeError(f"state.scales must be a mapping {{fqn: Tensor}}, got {type(scales).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    params, out = dict(model.named_parameters()), {}
    for key, scale in scales.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name not in params:
            raise ValueError(f"state.scales names {key!r}, but the model has no parameter {name!r} "
                             f"(prefix {prefix!r}); is the prefix right?")
        b = bits if isinstance(bits, int) else (bits.get(key) if isinstance(bits, Mapping) else None)
        if b is None:
            raise ValueError(f"state.bits must give a bit width for {key!r}, got {bits!r}")
        grid.check_bits(b, name=f"state.bits[{key!r}]")
        if not isinstance(scale, torch.Tensor):
            raise TypeError(f"state.scales[{key!r}] must be a Tensor, got {type(scale).__name__}")
        scale = scale.detach().to("cpu", torch.float32)
        try:
            grid.broadcast_scale(scale, params[name])
        except ValueError as err:
            raise ValueError(f"state.scales[{key!r}]: {err}") from None
        if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"state.scales[{key!r}] must be finite and > 0")
        out[name] = (key, b, scale)
    return out


def snap_model(model: torch.nn.Module, state, prefix: str = "") -> torch.nn.Module:
    """A copy of ``model`` in eval mode whose compressed weights lie on their grid.

    Masks (if any) are applied first: pruned weights are exactly 0.0, as a packed file
    decodes them.

    Example:
        >>> lin = snap_model(torch.nn.Linear(4, 3), {"bits": 4, "scales": {"weight": torch.full((3,), 0.1)}})
        >>> bool(((lin.weight / 0.1).round() * 0.1 - lin.weight).abs().max() < 1e-6)
        True
    """
    resolved = compressed_weights(model, state, prefix)
    snapped = copy.deepcopy(model).eval()
    params = dict(snapped.named_parameters())
    with torch.no_grad():
        for key, mask in (_field(state, "masks") or {}).items():
            p = params.get(key[len(prefix):]) if key.startswith(prefix) else None
            if p is None:
                continue
            if not isinstance(mask, torch.Tensor) or mask.shape != p.shape:
                found = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"state.masks[{key!r}] must be a bool Tensor of shape {tuple(p.shape)}, got {found}")
            p.mul_(mask.to(p.dtype))
        for name, (_, bits, scale) in resolved.items():
            params[name].copy_(grid.snap(params[name].detach(), scale, bits))
    return snapped


# --- export-time rewrites that keep the time axis dynamic ---------------------------


class _TraceableAttention(torch.nn.Module):
    """``nn.MultiheadAttention``'s function, written so that the tracer keeps shapes dynamic.

    The tracer freezes the query length in ``F.multi_head_attention_forward``'s reshapes
    (torch 2.14), so an exported attention would only run at the example's length. This
    computes the same with ``unflatten``/``flatten`` and reuses the original parameters.
    """

    def __init__(self, mha: torch.nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        m, e, heads = self.mha, self.mha.embed_dim, self.mha.num_heads
        if m.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (L, B, E)
        w, b = m.in_proj_weight, m.in_proj_bias
        q, k, v = (torch.nn.functional.linear(x, w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e])
                   .unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)  # (B, H, L, d)
                   for i, x in enumerate((query, key, value)))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (m.head_dim ** -0.5)  # (B, H, L, S)
        if attn_mask is not None:
            attn_mask = attn_mask.unflatten(0, (-1, heads)) if attn_mask.dim() == 3 else attn_mask  # (B*H, L, S)
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        if key_padding_mask is not None:  # (B, S), True = padding
            scores = scores.masked_fill(key_padding_mask[:, None, None, :].to(torch.bool), float("-inf"))
        attn = scores.softmax(dim=-1)
        out = m.out_proj(torch.matmul(attn, v).permute(2, 0, 1, 3).flatten(-2))  # (L, B, E)
        weights = (attn.mean(dim=1) if average_attn_weights else attn) if need_weights else None
        return (out.transpose(0, 1) if m.batch_first else out), weights


def _traceable(model: torch.nn.Module) -> torch.nn.Module:
    """Swap (in place) every plain ``nn.MultiheadAttention`` for ``_TraceableAttention``."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if (isinstance(child, torch.nn.MultiheadAttention) and child._qkv_same_embed_dim
                    and child.bias_k is None and not child.add_zero_attn):
                setattr(parent, child_name, _TraceableAttention(child))
    return model


def _padding_mask(lengths: torch.Tensor) -> torch.Tensor:
    # (B,) -> (B, max(lengths)) with the max computed in the graph: torchaudio's version
    # calls .item(), which the tracer freezes into a constant.
    steps = torch.arange(lengths.max(), device=lengths.device, dtype=lengths.dtype)
    return steps[None, :] >= lengths[:, None]


@contextlib.contextmanager
def _traceable_conformer():
    module = sys.modules.get("torchaudio.models.conformer")  # patched only if already in use
    original = getattr(module, "_lengths_to_padding_mask", None)
    if original is not None:
        module._lengths_to_padding_mask = _padding_mask
    try:
        yield
    finally:
        if original is not None:
            module._lengths_to_padding_mask = original


class _Bound(torch.nn.Module):
    """``fn(model, *inputs)`` as a module, to export e.g. one RNN-T prediction step."""

    def __init__(self, model: torch.nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs):
        return self.fn(self.model, *inputs)


# --- float initializers -> int8 + DequantizeLinear ---------------------------------


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


def inference_session(path: str | os.PathLike, threads: int = 1, exact: bool = True):
    """An onnxruntime CPU session for an exported file.

    onnxruntime fuses ``DequantizeLinear -> MatMul`` into ``MatMulNBits``, whose default
    accuracy level (4) quantizes activations to int8 on the fly: faster, but it moved
    log-probabilities by about 5e-4 on the test models. ``exact=True`` asks for float32
    accumulation (level 1), which keeps the exported graph's float semantics.

    Example:
        >>> sess = inference_session("model.onnx")  # doctest: +SKIP
        >>> log_probs, lengths = sess.run(None, {"features": x, "feature_lengths": n})  # doctest: +SKIP
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    if exact:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


# --- the entry point -----------------------------------------------------------------


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
        >>> lin = torch.nn.Linear(16, 8)
        >>> state = {"bits": 8, "scales": {"weight": grid.compute_scale(lin.weight, 8)}}
        >>> out = to_onnx(lin, state, (torch.randn(2, 16),), os.path.join(tempfile.mkdtemp(), "m.onnx"))
        >>> out.int8_initializers != () and out.not_int8 == ()
        True
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET} (per-axis DequantizeLinear), got {opset!r}")
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
    snapped = _traceable(snapped)  # renames attention parameters; values are what matters
    if forward is not None:
        snapped = _Bound(snapped, forward)
    buf = io.BytesIO()
    with torch.no_grad(), _traceable_conformer(), warnings.catch_warnings():
        # The TorchScript exporter is deliberate: it maps nn.LSTM onto the ONNX LSTM op.
        for message in (".*legacy TorchScript-based ONNX export", ".*variable length with LSTM",
                        "It is recommended that constant folding be turned off"):
            warnings.filterwarnings("ignore", message=message)
        # nn.LSTM's own argument checks compare sizes in Python; harmless for the trace.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.(modules|utils)\.rnn")
        torch.onnx.export(
            snapped, tuple(example_inputs), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=list(input_names or []) or None, output_names=list(output_names or []) or None,
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None,
            # PRESERVE (the copy is in eval mode) keeps BatchNorm as its own op; EVAL folds
            # it into the conv before it, which takes that conv's weight off its grid.
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    fp32 = buf.getvalue()
    proto = onnx.load_from_string(fp32)
    done, covered = quantize_initializers(proto, weights)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_bytes(path, [data])  # temp file beside path, fsync, os.replace
    partial = tuple(k for k, (w, _) in weights.items() if any((k, r) not in covered for r in range(w.shape[0])))
    return OnnxExport(path, len(data), len(fp32), tuple(done), partial)
