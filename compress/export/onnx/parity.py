"""Parity: the written graphs against the snapped PyTorch model, on inputs of other shapes.

An input of another batch size and length than the tracing example's catches a shape the
tracer froze. Greedy output must be identical, and log-probabilities (CTC) or encoder
outputs (transducer) within ``TOLERANCE``: the graph is the quantized model, not an
approximation of it.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from compress.export.onnx.runtime import inference_session
from compress.export.onnx.snap import snap_model

TOLERANCE = 1e-4  # max abs difference on log-probabilities / encoder outputs


class ParityError(RuntimeError):
    """The ONNX graphs do not compute what the snapped PyTorch model computes."""


def check_parity(model: torch.nn.Module, state, graphs: dict, inputs) -> float:
    """Max abs difference ONNX vs snapped PyTorch over ``inputs``.

    Args:
        model, state: what was exported; the model is snapped here again, as the oracle.
        graphs: ``export_graphs``'s ``{role: OnnxExport}``.
        inputs: ``[(features (B, T, F), lengths (B,)), ...]``.

    Raises:
        ParityError: greedy output differs, the difference exceeds ``TOLERANCE``, or
            onnxruntime refuses an input (a shape frozen during tracing).
    """
    try:
        oracle = snap_model(model, state)
        sessions = {role: inference_session(g.path) for role, g in graphs.items()}
        compare = _ctc if "model" in sessions else _transducer
        worst = 0.0
        for x, lengths in inputs:
            worst = max(worst, compare(oracle, sessions, x, lengths))
    except ParityError:
        raise
    except Exception as err:  # onnxruntime refusing an input of another batch size or length
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ParityError(f"parity: running the ONNX graph on an input of another batch size/length failed "
                          f"(a shape frozen during tracing?): {first}") from None
    if worst > TOLERANCE:
        raise ParityError(f"parity: max abs difference {worst:.3g} exceeds {TOLERANCE:g}")
    return worst


def _ctc(oracle, sessions: dict, x: torch.Tensor, lengths: torch.Tensor) -> float:
    """Log-probabilities on valid frames and greedy paths, utterance by utterance."""
    got = sessions["model"].run(None, {"features": x.numpy(), "feature_lengths": lengths.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in oracle(x, lengths)]  # (B, T', V), (B,)
    if got[0].shape != want[0].shape or not np.array_equal(got[1], want[1]):
        raise ParityError(f"parity: ONNX shapes/lengths {got[0].shape} {got[1]} differ from PyTorch's "
                          f"{want[0].shape} {want[1]}")
    worst = 0.0
    for b, n in enumerate(want[1]):
        worst = max(worst, float(np.abs(got[0][b, :n] - want[0][b, :n]).max(initial=0.0)))
        if not np.array_equal(got[0][b, :n].argmax(-1), want[0][b, :n].argmax(-1)):
            raise ParityError(f"parity: greedy paths differ for utterance {b}")
    return worst


def _transducer(oracle, sessions: dict, x: torch.Tensor, lengths: torch.Tensor) -> float:
    """Encoder outputs, then one greedy search over the graphs and one over the oracle's steps."""
    from compress.models.rnnt import greedy_search, joint_step, predict_step  # imports Lightning

    def step(token, h, c):  # (B, 1), (L, B, P), (L, B, P) -> (B, 1, P), (L, B, P), (L, B, P)
        feed = {"token": token.numpy(), "h": h.numpy(), "c": c.numpy()}
        return [torch.from_numpy(a) for a in sessions["predictor"].run(None, feed)]

    def join(enc, pred):  # (B, H), (B, P) -> (B, V)
        return torch.from_numpy(sessions["joiner"].run(None, {"enc": enc.numpy(), "pred": pred.numpy()})[0])

    hp = getattr(oracle, "hparams", None)
    max_symbols = int(hp.get("max_symbols", 5)) if hasattr(hp, "get") else 5
    feed = {"features": x.numpy(), "feature_lengths": lengths.numpy()}
    enc_o, n_o = (torch.from_numpy(a) for a in sessions["encoder"].run(None, feed))  # (B, T', H), (B,)
    with torch.no_grad():
        enc_t, n_t = oracle(x, lengths)
        h0 = torch.zeros_like(oracle.predict(torch.zeros(x.shape[0], 1, dtype=torch.long))[1][0])  # (L, B, P)
        ref = greedy_search(enc_t, n_t, partial(predict_step, oracle), partial(joint_step, oracle), (h0, h0),
                            max_symbols)
    ours = greedy_search(enc_o, n_o, step, join, (h0, h0), max_symbols)
    if ours != ref:
        raise ParityError("parity: greedy RNN-T transcripts differ between ONNX and PyTorch")
    return float((enc_o - enc_t).abs().max())
