"""``compress export-onnx CKPT -o model.onnx``: a checkpoint to ONNX with int8 weights.

The model class is, in this order: ``--model-class``; the checkpoint's
``hyper_parameters["_class_path"]`` (LightningCLI's convention) or top-level
``"model_class"``; else the built-in model of ``compress.models.MODELS`` whose
parameter names are exactly the checkpoint's. It is rebuilt with
``Class.load_from_checkpoint``.

CTC models give one graph. A model with ``predict`` and ``joint`` methods (RNN-T) gives
three: the encoder (``forward``) in ``-o``, one prediction-network step in
``<stem>.predictor.onnx`` and the joiner in ``<stem>.joiner.onnx``.

After writing, the ONNX graphs are checked against the PyTorch model with snapped weights
on two inputs of different batch size and length (``--no-check`` skips it).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Mapping

from compress.cli import CliError

FEATURE_KEYS = ("n_mels", "n_features", "feature_dim", "input_dim")
TOLERANCE = 1e-4  # max abs difference on log-probabilities / logits


def _import_class(path: str, what: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CliError(f"{what}: cannot import {path!r} ({err})") from None


def _hparams(ckpt: dict) -> dict:
    hp = ckpt.get("hyper_parameters")
    return dict(hp) if isinstance(hp, Mapping) else {}


def _model_class(ckpt: dict, given: str | None):
    """The LightningModule class to rebuild (see the module docstring for the order)."""
    if given:
        return _import_class(given, "--model-class")
    hp = _hparams(ckpt)
    stored = hp.get("_class_path") or ckpt.get("model_class")
    if isinstance(stored, str):
        return _import_class(stored, "checkpoint class path")
    from compress.models import MODELS

    keys = set(ckpt["state_dict"])
    for cls in MODELS.values():
        try:
            if set(cls(**{k: v for k, v in hp.items() if not k.startswith("_")}).state_dict()) == keys:
                return cls
        except (TypeError, ValueError):  # other hyper-parameters: another class
            continue
    raise CliError("CKPT: cannot tell the model class (no hyper_parameters['_class_path'], no 'model_class', "
                   "and no built-in model has its parameter names); pass --model-class package.module.Class")


def _features(ckpt: dict, given: int | None) -> int:
    if given:
        return given
    hp = _hparams(ckpt)
    for key in FEATURE_KEYS:
        if isinstance(hp.get(key), int):
            return hp[key]
    raise CliError(f"cannot tell the feature size: none of {FEATURE_KEYS} in hyper_parameters; pass --features N")


def example_inputs(batch: int, frames: int, feats: int, seed: int = 0):
    """Random features (B, T, F) and lengths (B,), the first at full length."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(frames // 2, 1), frames + 1, (batch,), generator=g)
    lengths[0] = frames
    return torch.randn(batch, frames, feats, generator=g), lengths


# --- RNN-T: three graphs ---------------------------------------------------------------


def _predict_step(m, token, h, c):  # (B, 1), (L, B, P), (L, B, P)
    out, (h, c) = m.predict(token, (h, c))
    return out, h, c  # (B, 1, P), (L, B, P), (L, B, P)


def _joint_step(m, enc, pred):  # (B, H), (B, P) -> (B, V)
    return m.joint(enc[:, None], pred[:, None])[:, 0, 0]


def _rnnt_greedy(encode, predict, join, x, lengths, state_shape, blank=0, max_symbols=5):
    """Greedy RNN-T token ids, one utterance at a time, over callables returning numpy."""
    import numpy as np

    enc, enc_len = encode(x, lengths)  # (B, T, H), (B,)
    hyps = []
    for b in range(enc.shape[0]):
        h = c = np.zeros(state_shape, np.float32)  # (L, 1, P)
        pred, h, c = predict(np.full((1, 1), blank, np.int64), h, c)
        hyp = []
        for t in range(int(enc_len[b])):
            for _ in range(max_symbols):
                k = int(join(enc[b:b + 1, t], pred[:, 0]).argmax(-1)[0])
                if k == blank:
                    break
                hyp.append(k)
                pred, h, c = predict(np.full((1, 1), k, np.int64), h, c)
        hyps.append(hyp)
    return enc, hyps


def export_graphs(model, state, out: str, x, lengths, opset: int) -> dict:
    """Write the graph(s) of ``model``; ``{role: OnnxExport}``."""
    import torch

    from compress.export.onnx import to_onnx

    feats = {"features": {0: "batch", 1: "time"}, "feature_lengths": {0: "batch"}}
    if not (hasattr(model, "predict") and hasattr(model, "joint")):
        axes = {**feats, "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}}
        return {"model": to_onnx(model, state, (x, lengths), out, input_names=list(feats),
                                 output_names=["log_probs", "out_lengths"], dynamic_axes=axes, opset=opset)}
    stem = out[:-5] if out.endswith(".onnx") else out
    with torch.no_grad():
        enc, _ = model.eval()(x, lengths)  # (B, T', H)
        pred, (h, _) = model.predict(torch.zeros(x.shape[0], 1, dtype=torch.long))  # (B, 1, P), (L, B, P)
    graphs = {"encoder": to_onnx(model, state, (x, lengths), out, input_names=list(feats),
                                 output_names=["enc", "enc_lengths"], opset=opset,
                                 dynamic_axes={**feats, "enc": {0: "batch", 1: "frames"}, "enc_lengths": {0: "batch"}})}
    graphs["predictor"] = to_onnx(
        model, state, (torch.zeros(x.shape[0], 1, dtype=torch.long), h, torch.zeros_like(h)), f"{stem}.predictor.onnx",
        forward=_predict_step, input_names=["token", "h", "c"], output_names=["pred", "h_out", "c_out"],
        dynamic_axes={"token": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"}, "pred": {0: "batch"},
                      "h_out": {1: "batch"}, "c_out": {1: "batch"}}, opset=opset)
    graphs["joiner"] = to_onnx(
        model, state, (enc[:, 0], pred[:, 0]), f"{stem}.joiner.onnx", forward=_joint_step,
        input_names=["enc", "pred"], output_names=["logits"],
        dynamic_axes={"enc": {0: "batch"}, "pred": {0: "batch"}, "logits": {0: "batch"}}, opset=opset)
    return graphs


# --- parity check ------------------------------------------------------------------------


def _check_parity(model, state, graphs: dict, inputs) -> float:
    """Max abs difference ONNX vs snapped PyTorch over ``inputs``; raises if greedy output differs."""
    try:
        return _parity(model, state, graphs, inputs)
    except CliError:
        raise
    except Exception as err:  # onnxruntime refusing an input of another batch size or length
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"parity: running the ONNX graph on an input of another batch size/length failed "
                       f"(a shape frozen during tracing?): {first}") from None


def _parity(model, state, graphs: dict, inputs) -> float:
    import numpy as np
    import torch

    from compress.export.onnx import inference_session, snap_model

    oracle = snap_model(model, state)
    sess = {role: inference_session(g.path) for role, g in graphs.items()}
    worst = 0.0
    for x, lengths in inputs:
        if "model" in sess:  # CTC: compare log-probs on valid frames and greedy paths
            got = sess["model"].run(None, {"features": x.numpy(), "feature_lengths": lengths.numpy()})
            with torch.no_grad():
                want = [t.numpy() for t in oracle(x, lengths)]
            if got[0].shape != want[0].shape or not np.array_equal(got[1], want[1]):
                raise CliError(f"parity: ONNX shapes/lengths {got[0].shape} {got[1]} differ from PyTorch's "
                               f"{want[0].shape} {want[1]}")
            for b, n in enumerate(want[1]):
                worst = max(worst, float(np.abs(got[0][b, :n] - want[0][b, :n]).max(initial=0.0)))
                if not np.array_equal(got[0][b, :n].argmax(-1), want[0][b, :n].argmax(-1)):
                    raise CliError(f"parity: greedy paths differ for utterance {b}")
            continue
        def torch_call(fn):
            def run(*args):
                with torch.no_grad():
                    out = fn(oracle, *(torch.as_tensor(a) for a in args))
                return [o.numpy() for o in out] if isinstance(out, tuple) else out.numpy()
            return run

        with torch.no_grad():
            state_shape = (oracle.predict(torch.zeros(1, 1, dtype=torch.long))[1][0].shape)
        ours = (lambda a, n: sess["encoder"].run(None, {"features": a.numpy(), "feature_lengths": n.numpy()}),
                lambda t, h, c: sess["predictor"].run(None, {"token": t, "h": h, "c": c}),
                lambda e, p: sess["joiner"].run(None, {"enc": e, "pred": p})[0])
        ref = (torch_call(lambda m, a, n: m(a, n)), torch_call(_predict_step), torch_call(_joint_step))
        hp = getattr(oracle, "hparams", None)
        max_symbols = int(hp.get("max_symbols", 5)) if hasattr(hp, "get") else 5
        enc_o, hyp_o = _rnnt_greedy(*ours, x, lengths, tuple(state_shape), max_symbols=max_symbols)
        enc_t, hyp_t = _rnnt_greedy(*ref, x, lengths, tuple(state_shape), max_symbols=max_symbols)
        worst = max(worst, float(np.abs(enc_o - enc_t).max()))
        if hyp_o != hyp_t:
            raise CliError("parity: greedy RNN-T transcripts differ between ONNX and PyTorch")
    if worst > TOLERANCE:
        raise CliError(f"parity: max abs difference {worst:.3g} exceeds {TOLERANCE:g}")
    return worst


# --- the command ---------------------------------------------------------------------------


def _packed_size(model, state, ckpt: dict, directory: str) -> int | None:
    """Size of the packed file for the same weights, or None where the packer is not installed."""
    try:
        from compress.export.pack import pack
    except ImportError:
        return None
    from compress.export.onnx import snap_model

    snapped = {k: v.detach() for k, v in snap_model(model, state).state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".psq", dir=directory)
    os.close(fd)
    try:
        return pack({"state_dict": snapped, "callbacks": ckpt.get("callbacks") or {}}, tmp).file_bytes
    finally:
        os.unlink(tmp)


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


def run(args) -> int:
    from compress.export.sources import load_checkpoint, read_compression_state

    if not args.output.endswith(".onnx"):
        raise CliError(f"-o/--output: expected a path ending in .onnx, got {args.output!r}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CliError(f"-o/--output: directory does not exist: {out_dir}")
    for name in ("frames", "batch", "features"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name}: expected an integer >= 1, got {value}")
    try:
        ckpt = load_checkpoint(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
        state = read_compression_state(ckpt)
    except (ValueError, TypeError) as err:
        raise CliError(f"CKPT: {err}") from None
    if not state.scales:
        raise CliError("CKPT: no QuantizationRegularizer state with scales; nothing to store as int8")
    cls = _model_class(ckpt, args.model_class)
    try:
        model = cls.load_from_checkpoint(args.checkpoint, map_location="cpu",
                                         weights_only=not args.trust_checkpoint).eval()
    except Exception as err:  # a class that does not fit the checkpoint: one line, not a traceback
        raise CliError(f"CKPT: {cls.__name__}.load_from_checkpoint failed: {str(err).splitlines()[0]}") from None
    feats = _features(ckpt, args.features)
    x, lengths = example_inputs(args.batch, args.frames, feats)
    try:
        graphs = export_graphs(model, state, args.output, x, lengths, args.opset)
    except (ValueError, TypeError) as err:  # bad settings, named by to_onnx
        raise CliError(str(err).splitlines()[0]) from None
    onnx_bytes = sum(g.size_bytes for g in graphs.values())
    fp32_bytes = sum(g.fp32_bytes for g in graphs.values())
    for role, g in graphs.items():
        print(f"{role}: {g.path}  {_size(g.size_bytes)}, {len(g.int8_initializers)} int8 initializers")
    not_int8 = set.intersection(*(set(g.not_int8) for g in graphs.values()))
    if not_int8:  # in no graph as int8: the exporter changed them (still exact, only not smaller)
        print(f"compressed but stored float32: {', '.join(sorted(not_int8))}")
    print(f"ONNX (int8 weights): {_size(onnx_bytes)}")
    print(f"ONNX fp32 (same graph, float32 weights): {_size(fp32_bytes)}  ratio {fp32_bytes / onnx_bytes:.2f}x")
    try:
        packed = _packed_size(model, state, ckpt, out_dir)
    except (ValueError, TypeError) as err:  # the ONNX files stand; only the comparison is missing
        packed = None
        print(f"packed sparse-int8 file: not measured ({str(err).splitlines()[0]})", file=sys.stderr)
    if packed is not None:
        print(f"packed sparse-int8 file: {_size(packed)}  ratio {fp32_bytes / packed:.2f}x vs ONNX fp32")
    if not args.no_check:
        second = example_inputs(args.batch + 1, args.frames + args.frames // 2 + 3, feats, seed=1)
        worst = _check_parity(model, state, graphs, [(x, lengths), second])
        print(f"parity: max abs difference {worst:.2e} (<= {TOLERANCE:g}), identical greedy output")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a checkpoint to ONNX with int8 weights (DequantizeLinear)",
        description="Rebuild the LightningModule of CKPT, snap its compressed weights to their grid and "
        "write ONNX with int8 initializers and per-channel scales (biases and norms stay float32). "
        "Batch and time axes are dynamic. RNN-T models give three graphs: encoder, one "
        "prediction-network step (<stem>.predictor.onnx) and joiner (<stem>.joiner.onnx). "
        "Prints the ONNX, fp32 and packed sizes; then checks parity with PyTorch.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="Lightning checkpoint with a QuantizationRegularizer state")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .onnx path (written atomically)")
    p.add_argument("--model-class", metavar="DOTTED.PATH",
                   help="LightningModule class, e.g. compress.models.CTCLSTM (default: from the checkpoint)")
    p.add_argument("--features", type=int, metavar="N", help="input feature size (default: hyper-parameter n_mels)")
    p.add_argument("--frames", type=int, default=200, metavar="T", help="frames of the tracing example (default 200)")
    p.add_argument("--batch", type=int, default=2, metavar="B", help="batch of the tracing example (default 2)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 13 (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch parity check")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects beyond tensors and plain types in CKPT")
    p.set_defaults(func=run)
