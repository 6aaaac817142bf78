"""Tracing: the TorchScript exporter, with the rewrites that keep the time axis dynamic.

The TorchScript exporter is deliberate: it maps ``nn.LSTM`` onto the ONNX LSTM op. Left
alone, it would freeze two sizes to the example's length, and the graph would run at that
length only: the query length in ``nn.MultiheadAttention``'s reshapes (swapped here for
``_TraceableAttention``) and the ``.item()`` in torchaudio's padding mask (patched while
tracing).
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Mapping, Sequence

import torch


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


def trace(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], *, forward=None,
          input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
          dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, opset: int) -> bytes:
    """The float ONNX graph of ``model`` (or of ``forward(model, *inputs)``), serialized.

    ``model`` is changed in place (its attention modules swapped): pass a copy.
    """
    model = _traceable(model)  # renames attention parameters; values are what matters
    if forward is not None:
        model = _Bound(model, forward)
    buf = io.BytesIO()
    with torch.no_grad(), _traceable_conformer(), warnings.catch_warnings():
        for message in (".*legacy TorchScript-based ONNX export", ".*variable length with LSTM",
                        "It is recommended that constant folding be turned off"):
            warnings.filterwarnings("ignore", message=message)
        # nn.LSTM's own argument checks compare sizes in Python; harmless for the trace.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.(modules|utils)\.rnn")
        torch.onnx.export(
            model, tuple(example_inputs), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=list(input_names or []) or None, output_names=list(output_names or []) or None,
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None,
            # PRESERVE (the copy is in eval mode) keeps BatchNorm as its own op; EVAL folds
            # it into the conv before it, which takes that conv's weight off its grid.
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return buf.getvalue()
