"""The graphs of each model family: a CTC model gives one, a transducer (RNN-T) three.

A transducer's greedy search is a Python loop (how many symbols a frame emits depends
on an arg-max) that tracing cannot capture. It is exported as its encoder
(``forward``), one prediction-network step and the joiner on one (frame, prefix) pair,
the very step functions ``compress.models.rnnt.greedy_search`` runs in PyTorch, so that
one search serves both (``parity`` runs it over the graphs).
"""

from __future__ import annotations

import os

import torch

from compress.export.onnx.graph import DEFAULT_OPSET, OnnxExport, to_onnx

FEATURES = {"features": {0: "batch", 1: "time"}, "feature_lengths": {0: "batch"}}


def example_inputs(batch: int, frames: int, feats: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features (B, T, F) and lengths (B,), the first at full length.

    Lengths vary so that tracing sees padding; the seed makes an export repeatable.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(frames // 2, 1), frames + 1, (batch,), generator=g)
    lengths[0] = frames
    return torch.randn(batch, frames, feats, generator=g), lengths


def is_transducer(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a prediction network (``predict``) and a joiner (``joint``), as RNN-T."""
    return hasattr(model, "predict") and hasattr(model, "joint")


def export_graphs(model: torch.nn.Module, state, out: str | os.PathLike, x: torch.Tensor, lengths: torch.Tensor,
                  opset: int = DEFAULT_OPSET) -> dict[str, OnnxExport]:
    """Write the graph(s) of ``model`` with int8 weights; batch and time axes are dynamic.

    Args:
        model: a CTC model, ``forward(features, lengths) -> (log_probs, lengths)``, or a
            transducer (``is_transducer``) whose ``forward`` is its encoder. Put in eval mode.
        state: its compression state (see ``to_onnx``).
        out: the ``.onnx`` path; a transducer's other graphs go beside it, as
            ``<stem>.predictor.onnx`` and ``<stem>.joiner.onnx``.
        x, lengths: the tracing example, features (B, T, F) and lengths (B,).
        opset: ONNX opset, >= 13.

    Returns:
        ``{role: OnnxExport}``: role ``"model"`` for CTC; ``"encoder"``, ``"predictor"``
        and ``"joiner"`` for a transducer.
    """
    out = os.fspath(out)
    if is_transducer(model):
        return _transducer(model, state, out, x, lengths, opset)
    axes = {**FEATURES, "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}}
    return {"model": to_onnx(model, state, (x, lengths), out, input_names=list(FEATURES),
                             output_names=["log_probs", "out_lengths"], dynamic_axes=axes, opset=opset)}


def _transducer(model, state, out: str, x, lengths, opset: int) -> dict[str, OnnxExport]:
    from compress.models.rnnt import joint_step, predict_step  # imports Lightning: only for transducers

    stem = out[:-5] if out.endswith(".onnx") else out
    token = torch.zeros(x.shape[0], 1, dtype=torch.long)  # (B, 1), the blank / start symbol
    with torch.no_grad():
        enc, _ = model.eval()(x, lengths)  # (B, T', H)
        pred, (h, _) = model.predict(token)  # (B, 1, P), (L, B, P)
    graphs = {"encoder": to_onnx(model, state, (x, lengths), out, input_names=list(FEATURES),
                                 output_names=["enc", "enc_lengths"], opset=opset,
                                 dynamic_axes={**FEATURES, "enc": {0: "batch", 1: "frames"}, "enc_lengths": {0: "batch"}})}
    graphs["predictor"] = to_onnx(
        model, state, (token, h, torch.zeros_like(h)), f"{stem}.predictor.onnx",
        forward=predict_step, input_names=["token", "h", "c"], output_names=["pred", "h_out", "c_out"],
        dynamic_axes={"token": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"}, "pred": {0: "batch"},
                      "h_out": {1: "batch"}, "c_out": {1: "batch"}}, opset=opset)
    graphs["joiner"] = to_onnx(
        model, state, (enc[:, 0], pred[:, 0]), f"{stem}.joiner.onnx", forward=joint_step,
        input_names=["enc", "pred"], output_names=["logits"],
        dynamic_axes={"enc": {0: "batch"}, "pred": {0: "batch"}, "logits": {0: "batch"}}, opset=opset)
    return graphs
