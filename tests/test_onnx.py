"""ONNX export: int8 initializers + DequantizeLinear, checked against the snapped PyTorch model.

The oracle of every parity test is the PyTorch model whose compressed weights are
``grid.snap(w, scale, bits)``, built here independently of the exporter's own snapping.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import pytest
import torch
import torchaudio
from onnx import numpy_helper

from compress.errors import ArgumentError
from compress.export import pack
from compress.export.onnx import (
    ParityError,
    check_parity,
    checkpoint_to_onnx,
    export_graphs,
    inference_session,
    to_onnx,
)
from compress.export.onnx.rebuild import feature_size
from compress.quant import grid

CTC_IO = {
    "input_names": ["features", "feature_lengths"], "output_names": ["log_probs", "out_lengths"],
    "dynamic_axes": {"features": {0: "batch", 1: "time"}, "feature_lengths": {0: "batch"},
                     "log_probs": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}},
}


# --- small speech-shaped models --------------------------------------------------------


class LstmCTC(torch.nn.Module):
    """Conv1d subsampling (stride 2) + bidirectional 2-layer LSTM + linear CTC head."""

    def __init__(self, feats=20, channels=64, hidden=128, vocab=12):
        super().__init__()
        self.conv = torch.nn.Conv1d(feats, channels, 3, stride=2, padding=1)
        self.lstm = torch.nn.LSTM(channels, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(2 * hidden, vocab)

    def forward(self, features, feature_lengths):  # (B, T, F), (B,)
        x = torch.relu(self.conv(features.transpose(1, 2))).transpose(1, 2)  # (B, T', C)
        x, _ = self.lstm(x)  # (B, T', 2H)
        lengths = torch.div(feature_lengths + 1, 2, rounding_mode="floor")
        return self.head(x).log_softmax(-1), lengths


class ConformerCTC(torch.nn.Module):
    """Linear projection + torchaudio Conformer + linear CTC head."""

    def __init__(self, feats=20, dim=32, vocab=12):
        super().__init__()
        self.proj = torch.nn.Linear(feats, dim)
        self.conformer = torchaudio.models.Conformer(dim, num_heads=4, ffn_dim=64, num_layers=2,
                                                     depthwise_conv_kernel_size=7)
        self.head = torch.nn.Linear(dim, vocab)
        for m in self.modules():  # non-trivial BatchNorm statistics, as after training
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, features, feature_lengths):
        x, lengths = self.conformer(self.proj(features), feature_lengths)  # (B, T, D)
        return self.head(x).log_softmax(-1), lengths


class Predictor(torch.nn.Module):
    """RNN-T prediction network, one step: token (B, 1) + state -> output (B, 1, H) + state."""

    def __init__(self, vocab, hidden):
        super().__init__()
        self.embed, self.lstm = torch.nn.Embedding(vocab, hidden), torch.nn.LSTM(hidden, hidden, batch_first=True)

    def forward(self, token, h, c):  # (B, 1), (1, B, H), (1, B, H)
        out, (h, c) = self.lstm(self.embed(token), (h, c))
        return out, h, c


class Joiner(torch.nn.Module):
    def __init__(self, hidden, joint, vocab):
        super().__init__()
        self.enc, self.pred = torch.nn.Linear(hidden, joint), torch.nn.Linear(hidden, joint)
        self.out = torch.nn.Linear(joint, vocab)

    def forward(self, enc, pred):  # (B, H), (B, H) -> (B, V)
        return self.out(torch.tanh(self.enc(enc) + self.pred(pred)))


class Encoder(torch.nn.LSTM):
    def forward(self, features, feature_lengths):  # (B, T, F), (B,) -> (B, T, H), (B,)
        return super().forward(features)[0], feature_lengths


class TinyRNNT(torch.nn.Module):
    def __init__(self, feats=20, hidden=40, vocab=10):
        super().__init__()
        self.encoder = Encoder(feats, hidden, num_layers=2, batch_first=True)
        self.predictor, self.joiner = Predictor(vocab, hidden), Joiner(hidden, 32, vocab)


# --- helpers ---------------------------------------------------------------------------


def make_state(model, bits_of=lambda name: 8, per_tensor=()):
    """Compress every weight with 2+ dims, as the regularizer's targets would."""
    bits, scales = {}, {}
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            bits[name] = bits_of(name)
            scales[name] = grid.compute_scale(p, bits[name], "tensor" if name in per_tensor else "channel")
    return {"bits": bits, "scales": scales}


def snapped(model, state):
    """The oracle: a copy whose compressed weights are grid.snap(w, scale, bits)."""
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in state["scales"]:
                p.copy_(grid.snap(p, state["scales"][name], state["bits"][name]))
    return out


def make_state_from(state):
    """The test's own state mapping from a CompressionState (the oracle snaps without masks:
    write_checkpoint already zeroed the pruned weights)."""
    return {"bits": dict(state.bits), "scales": dict(state.scales)}


def session(path):
    return inference_session(path, threads=1)


def ctc_greedy(log_probs, lengths, blank=0):
    out = []
    for lp, n in zip(log_probs, lengths):
        ids = np.asarray(lp[: int(n)]).argmax(-1)
        out.append([int(t) for i, t in enumerate(ids) if t != blank and (i == 0 or t != ids[i - 1])])
    return out


def int8_elements(*paths):
    inits = [i for p in paths for i in onnx.load(str(p)).graph.initializer]
    return sum(int(np.prod(i.dims)) for i in inits if i.data_type == onnx.TensorProto.INT8)


def n_compressed(model, state):
    return sum(p.numel() for k, p in model.named_parameters() if k in state["scales"])


def ort_rnnt(stem):
    """Encoder, prediction step and joiner callables over ``stem``.onnx, ``stem``.predictor.onnx, ..."""
    enc, pred, join = (session(f"{stem}{part}.onnx") for part in ("", ".predictor", ".joiner"))
    return (lambda x, n: enc.run(None, {"features": x.numpy(), "feature_lengths": n.numpy()}),
            lambda t, h, c: pred.run(None, {"token": t, "h": h, "c": c}),
            lambda e, p: join.run(None, {"enc": e, "pred": p})[0])


def batch(b, t, feats=20):
    lengths = torch.randint(t // 2, t + 1, (b,))
    lengths[0] = t
    return torch.randn(b, t, feats), lengths


def check_ctc_parity(path, oracle, inputs):
    sess = session(path)
    for x, lengths in inputs:
        got = sess.run(None, {"features": x.numpy(), "feature_lengths": lengths.numpy()})
        with torch.no_grad():
            want = oracle(x, lengths)
        assert got[0].shape == tuple(want[0].shape)
        assert np.array_equal(got[1], want[1].numpy())
        diff = np.abs(got[0] - want[0].numpy()).max()
        assert diff <= 1e-4, f"max abs difference {diff}"
        assert ctc_greedy(got[0], got[1]) == ctc_greedy(want[0].numpy(), want[1].numpy())


# --- tests -----------------------------------------------------------------------------


def test_lstm_ctc_parity_size_and_int8_layout(tmp_path):
    model = LstmCTC().eval()
    state = make_state(model, bits_of=lambda n: 4 if n.startswith("conv") else 8, per_tensor={"head.weight"})
    oracle = snapped(model, state)
    x, lengths = batch(2, 40)
    with torch.no_grad():  # 4-bit conv: the oracle is measurably not the float model
        assert (oracle(x, lengths)[0] - model(x, lengths)[0]).abs().max() > 1e-3

    path = tmp_path / "ctc.onnx"
    out = to_onnx(model, state, (x, lengths), path, **CTC_IO)
    assert out.not_int8 == ()
    assert os.path.getsize(path) == out.size_bytes
    assert sorted(os.listdir(tmp_path)) == ["ctc.onnx"]  # no temp file left behind
    assert int8_elements(path) == n_compressed(model, state)  # every compressed weight, exactly once
    assert out.fp32_bytes / out.size_bytes > 3.5  # weights dominate: about 4x

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert np.abs(inits["conv.weight_quantized"]).max() <= grid.qmax(4)  # 4-bit levels, widened
    assert inits["conv.weight_scale"].shape == (64,)  # per output channel
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 6  # conv, 2 x (LSTM W, R), head
    assert any(i.name.endswith("_scale") and i.dims == [] for i in m.graph.initializer)  # per-tensor head
    floats = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.name.endswith("bias")]
    assert floats, "biases stay float"

    check_ctc_parity(path, oracle, [(x, lengths), batch(3, 57)])  # second: other batch and length


def test_conformer_ctc_parity(tmp_path):
    model = ConformerCTC().eval()
    state = make_state(model, bits_of=lambda n: 6)
    oracle = snapped(model, state)
    path = tmp_path / "conformer.onnx"
    out = to_onnx(model, state, batch(2, 30), path, **CTC_IO)
    assert out.not_int8 == ()  # depthwise convs too: BatchNorm is not folded into them
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert len(out.int8_initializers) >= 10
    # Each compressed weight once (the fused QKV projection is split in three by the exporter).
    assert int8_elements(path) == n_compressed(model, state)
    check_ctc_parity(path, oracle, [batch(2, 30), batch(3, 41), batch(1, 17)])


def rnnt_greedy(encode, predict, join, x, lengths, vocab_blank=0, state_shape=(1, 1, 40), max_symbols=3):
    """Greedy RNN-T decoding over three callables returning numpy arrays."""
    enc, enc_len = encode(x, lengths)  # (B, T, H), (B,)
    hyps = []
    for b in range(enc.shape[0]):
        h = c = np.zeros(state_shape, np.float32)  # (L, 1, P)
        token, hyp = np.array([[vocab_blank]], np.int64), []
        pred, h, c = predict(token, h, c)
        for t in range(int(enc_len[b])):
            for _ in range(max_symbols):
                k = int(join(enc[b:b + 1, t], pred[:, 0]).argmax(-1)[0])
                if k == vocab_blank:
                    break
                hyp.append(k)
                pred, h, c = predict(np.array([[k]], np.int64), h, c)
        hyps.append(hyp)
    return enc, hyps


def test_rnnt_three_graphs_greedy_parity(tmp_path):
    full = TinyRNNT().eval()
    state = make_state(full, bits_of=lambda n: 8 if n.startswith("joiner") else 5,
                       per_tensor={"predictor.lstm.weight_ih_l0"})  # LSTM W with one scale: no Reshape
    oracle = snapped(full, state)
    x, lengths = batch(2, 24)
    h0 = torch.zeros(1, 2, 40)
    stem = tmp_path / "r"
    to_onnx(full.encoder, state, (x, lengths), f"{stem}.onnx", prefix="encoder.",
            input_names=["features", "feature_lengths"], output_names=["enc", "enc_lengths"],
            dynamic_axes={"features": {0: "B", 1: "T"}, "feature_lengths": {0: "B"}, "enc": {0: "B", 1: "T"}})
    to_onnx(full.predictor, state, (torch.zeros(2, 1, dtype=torch.long), h0, h0), f"{stem}.predictor.onnx",
            prefix="predictor.", input_names=["token", "h", "c"], output_names=["out", "h_out", "c_out"],
            dynamic_axes={"token": {0: "B"}, "h": {1: "B"}, "c": {1: "B"}})
    out = to_onnx(full.joiner, state, (torch.randn(2, 40), torch.randn(2, 40)), f"{stem}.joiner.onnx",
                  prefix="joiner.", input_names=["enc", "pred"], output_names=["logits"],
                  dynamic_axes={"enc": {0: "B"}, "pred": {0: "B"}})
    assert out.not_int8 == () and len(out.int8_initializers) == 3
    assert int8_elements(*(f"{stem}{p}.onnx" for p in ("", ".predictor", ".joiner"))) == n_compressed(full, state)
    pred_graph = onnx.load(f"{stem}.predictor.onnx").graph
    assert [list(i.dims) for i in pred_graph.initializer if i.name.endswith("_scale")].count([]) == 1
    assert sum(n.name.endswith("_reshape") for n in pred_graph.node) == 1  # only R has per-row scales
    onnx_fns = ort_rnnt(stem)

    def torch_fn(module):
        def run(*args):
            with torch.no_grad():
                out = module(*(torch.as_tensor(a) for a in args))
            return [o.numpy() for o in out] if isinstance(out, tuple) else out.numpy()
        return run

    torch_fns = (torch_fn(oracle.encoder), torch_fn(oracle.predictor), torch_fn(oracle.joiner))
    for xb, nb in [(x, lengths), batch(3, 37)]:
        enc_onnx, hyp_onnx = rnnt_greedy(*onnx_fns, xb, nb)
        enc_torch, hyp_torch = rnnt_greedy(*torch_fns, xb, nb)
        assert np.abs(enc_onnx - enc_torch).max() <= 1e-4
        assert hyp_onnx == hyp_torch
        assert sum(map(len, hyp_torch)) > 0  # the comparison covers emitted tokens
    tok = np.array([[3], [4], [5]], np.int64)
    hc = np.random.default_rng(0).standard_normal((2, 1, 3, 40)).astype(np.float32)
    got, want = onnx_fns[1](tok, hc[0], hc[1]), torch_fns[1](tok, hc[0], hc[1])
    assert all(np.abs(g - w).max() <= 1e-4 for g, w in zip(got, want))


def test_uncompressed_weights_stay_float(tmp_path):
    model = LstmCTC().eval()
    state = make_state(model)
    del state["scales"]["head.weight"], state["bits"]["head.weight"]
    path = tmp_path / "m.onnx"
    out = to_onnx(model, state, batch(2, 20), path, **CTC_IO)
    assert not any(name.startswith("onnx::MatMul") for name in out.int8_initializers)
    m = onnx.load(str(path))
    head = [numpy_helper.to_array(i) for i in m.graph.initializer if i.name.startswith("onnx::MatMul")]
    assert len(head) == 1 and head[0].dtype == np.float32
    np.testing.assert_array_equal(head[0], model.head.weight.detach().numpy().T)
    check_ctc_parity(path, snapped(model, state), [batch(3, 33)])


def test_masks_are_applied_before_snapping(tmp_path):
    lin = torch.nn.Linear(16, 8)
    mask = torch.rand(8, 16) > 0.5
    state = {"bits": 8, "scales": {"weight": grid.compute_scale(lin.weight, 8)}, "masks": {"weight": mask}}
    path = tmp_path / "lin.onnx"
    to_onnx(lin, state, (torch.randn(2, 16),), path, input_names=["x"], dynamic_axes={"x": {0: "B"}})
    m = onnx.load(str(path))
    q = [numpy_helper.to_array(i) for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(q) == 1
    levels = q[0] if q[0].shape == (8, 16) else q[0].T
    assert (levels[~mask.numpy()] == 0).all() and (levels[mask.numpy()] != 0).any()
    x = torch.randn(5, 16)
    want = torch.nn.functional.linear(x, grid.snap(lin.weight * mask, state["scales"]["weight"], 8), lin.bias)
    got = session(path).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - want.detach().numpy()).max() <= 1e-5


def test_bad_arguments_are_named(tmp_path):
    lin = torch.nn.Linear(4, 3)
    good = {"bits": 8, "scales": {"weight": torch.ones(3)}}
    x = (torch.randn(1, 4),)
    with pytest.raises(ValueError, match="opset"):
        to_onnx(lin, good, x, tmp_path / "a.onnx", opset=12)
    with pytest.raises(ValueError, match="'head.weight'.*prefix"):
        to_onnx(lin, {"bits": 8, "scales": {"head.weight": torch.ones(3)}}, x, tmp_path / "a.onnx")
    with pytest.raises(ValueError, match=r"state.scales\['weight'\].*\(3,\)"):
        to_onnx(lin, {"bits": 8, "scales": {"weight": torch.ones(4)}}, x, tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="bits"):
        to_onnx(lin, {"bits": 9, "scales": {"weight": torch.ones(3)}}, x, tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="model"):
        to_onnx("lin", good, x, tmp_path / "a.onnx")
    assert os.listdir(tmp_path) == []


def test_failed_export_leaves_previous_file(tmp_path):
    class Broken(torch.nn.Linear):
        def forward(self, x):
            raise RuntimeError("boom")

    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        to_onnx(Broken(4, 3), {"bits": 8, "scales": {"weight": torch.ones(3)}}, (torch.randn(1, 4),), path)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.onnx"]


# --- the built-in models, through the command line -------------------------------------

SMALL = {
    "CTCLSTM": dict(hidden_size=32, num_layers=2, conv_channels=32),
    "RNNT": dict(encoder_hidden=32, encoder_layers=2, pred_hidden=24, joint_dim=16, conv_channels=32),
    "ConformerCTC": dict(conv_channels=32, d_model=32, ffn_dim=64, num_layers=2, kernel_size=7),
}


def write_checkpoint(model, path, bits=6, sparsity=0.0):
    """A Lightning checkpoint as the callbacks leave it (ARCHITECTURE.md, checkpoint contract):
    the regularizer's scales, and with ``sparsity`` the sparsifier's masks, the pruned
    weights zeroed in ``model`` itself. Weights are near their grid, not on it."""
    import pytorch_lightning as pl

    scales, masks = {}, {}
    with torch.no_grad():
        for k, p in model.named_parameters():
            if p.dim() >= 2:
                if sparsity:
                    masks[k] = p.abs() > p.abs().flatten().kthvalue(int(sparsity * p.numel())).values
                    p.mul_(masks[k])
                scales[k] = grid.compute_scale(p, bits)
    reg = {"version": 1, "bits": bits, "granularity": "channel", "clip": "max", "scales": scales,
           "epoch": 3, "weight": 0.1}
    callbacks = {"QuantizationRegularizer{'bits': 6}": reg}
    if sparsity:
        callbacks["GradualSparsifier{}"] = {"version": 1, "masks": masks, "target_sparsity": sparsity, "epoch": 3}
    torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": pl.__version__,
                "state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "callbacks": callbacks},
               path)
    return {"bits": {k: bits for k in scales}, "scales": scales}


def cli(*argv):
    from compress.cli import main

    return main([str(a) for a in argv])


def built_in(name):
    models = pytest.importorskip("compress.models")
    return getattr(models, name)


def _conformer_slices_with_int():
    import inspect

    try:
        return "int(lengths.max())" in inspect.getsource(built_in("ConformerCTC").forward)
    except Exception:
        return False


@pytest.mark.parametrize("name", [
    "CTCLSTM",
    pytest.param("ConformerCTC", marks=pytest.mark.xfail(
        condition=_conformer_slices_with_int(), strict=True, raises=AssertionError,
        reason="ConformerCTC.forward slices with int(lengths.max()), which tracing freezes to the "
               "example's length; x[:, : lengths.max()] keeps the time axis dynamic")),
])
def test_built_in_ctc_models_via_cli(tmp_path, capsys, name):
    model = built_in(name)(**SMALL[name]).eval()
    state = write_checkpoint(model, tmp_path / "m.ckpt")
    given = ["--model-class", f"compress.models.{name}"] if name == "CTCLSTM" else []  # else found by names
    code = cli("export-onnx", tmp_path / "m.ckpt", "-o", tmp_path / "m.onnx", "--no-check", "--frames", 64, *given)
    out = capsys.readouterr().out
    assert code == 0 and "ONNX fp32" in out and "ONNX (int8 weights)" in out
    oracle = snapped(model, state)
    sess = session(tmp_path / "m.onnx")
    x, n = batch(3, 101, feats=80)  # another batch size and length than the export's (2, 64)
    try:
        got = sess.run(None, {"features": x.numpy(), "feature_lengths": n.numpy()})
    except Exception as err:  # onnxruntime's own exception types
        raise AssertionError(f"the graph refused another batch size/length: {err}") from None
    with torch.no_grad():
        want = oracle(x, n)
    assert got[0].shape == tuple(want[0].shape), "time axis must be dynamic"
    assert np.abs(got[0] - want[0].numpy()).max() <= 1e-4
    from compress.data.text import ctc_collapse

    ours = [ctc_collapse(got[0][b, : int(got[1][b])].argmax(-1).tolist()) for b in range(3)]
    assert ours == oracle.transcribe(x, n)


def test_built_in_rnnt_via_cli(tmp_path, capsys):
    model = built_in("RNNT")(**SMALL["RNNT"]).eval()
    state = write_checkpoint(model, tmp_path / "r.ckpt", bits=5, sparsity=0.5)
    assert cli("export-onnx", tmp_path / "r.ckpt", "-o", tmp_path / "r.onnx", "--frames", 64) == 0
    out = capsys.readouterr().out
    assert "parity: max abs difference" in out and "stored float32" not in out and "packed" in out
    assert int8_elements(*(tmp_path.glob("r*.onnx"))) == n_compressed(model, state)
    oracle = snapped(model, state)
    x, n = batch(3, 93, feats=80)
    _, hyps = rnnt_greedy(*ort_rnnt(tmp_path / "r"),
        x, n, state_shape=(1, 1, 24), max_symbols=model.hparams.max_symbols)
    from compress.data.text import decode

    assert [" ".join(decode(h).split()) for h in hyps] == oracle.transcribe(x, n)
    assert any(hyps), "the comparison covers emitted symbols"


def test_cli_errors_are_one_line(tmp_path, capsys):
    model = built_in("CTCLSTM")(**SMALL["CTCLSTM"])
    write_checkpoint(model, tmp_path / "m.ckpt")
    assert cli("export-onnx", tmp_path / "m.ckpt", "-o", tmp_path / "m.onnx", "--model-class", "nowhere.Model") == 2
    assert "--model-class must be an importable class path, got 'nowhere.Model'" in capsys.readouterr().err
    assert cli("export-onnx", tmp_path / "m.ckpt", "-o", tmp_path / "m.txt") == 2
    assert "-o/--output must be a path ending in .onnx, got " in capsys.readouterr().err
    assert cli("export-onnx", tmp_path / "m.ckpt", "-o", tmp_path / "m.onnx", "--opset", "11", "--no-check") == 2
    assert "opset must be an integer >= 13" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    del ckpt["callbacks"]
    torch.save(ckpt, tmp_path / "plain.ckpt")
    assert cli("export-onnx", tmp_path / "plain.ckpt", "-o", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert "no QuantizationRegularizer state" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_parity_check_catches_a_different_model(tmp_path):
    model = built_in("CTCLSTM")(**SMALL["CTCLSTM"]).eval()
    state = make_state(model)
    x, n = batch(2, 48, feats=80)
    graphs = export_graphs(model, state, str(tmp_path / "m.onnx"), x, n, 17)
    assert check_parity(model, state, graphs, [(x, n)]) <= 1e-4
    with torch.no_grad():
        model.head.bias[0] += 1e-3  # a float tensor the graph holds: now stale (log_softmax ignores uniform shifts)
    with pytest.raises(ParityError, match="parity: max abs difference"):
        check_parity(model, state, graphs, [(x, n)])


def test_checkpoint_to_onnx_record_and_parity(tmp_path):
    model = built_in("RNNT")(**SMALL["RNNT"]).eval()
    write_checkpoint(model, tmp_path / "r.ckpt", bits=5, sparsity=0.5)
    result = checkpoint_to_onnx(tmp_path / "r.ckpt", tmp_path / "r.onnx", frames=64)
    assert list(result.graphs) == ["encoder", "predictor", "joiner"]
    assert result.onnx_bytes == sum(os.path.getsize(p) for p in tmp_path.glob("r*.onnx"))
    assert result.not_int8 == () and result.packed_error is None
    # The packed size is that of the same snapped weights packed by hand.
    snapped_sd = {k: v.detach() for k, v in snapped(model, make_state_from(result.state)).state_dict().items()}
    callbacks = torch.load(tmp_path / "r.ckpt", weights_only=True)["callbacks"]
    packed = pack({"state_dict": snapped_sd, "callbacks": callbacks}, tmp_path / "r.psq").file_bytes
    assert result.packed_bytes == packed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.ckpt", "r.joiner.onnx", "r.onnx", "r.predictor.onnx",
                                                          "r.psq"]  # no temporary file left
    assert result.check_parity() <= 1e-4


def test_checkpoint_to_onnx_errors_name_the_argument(tmp_path):
    model = built_in("CTCLSTM")(**SMALL["CTCLSTM"])
    write_checkpoint(model, tmp_path / "m.ckpt")
    out = tmp_path / "m.onnx"
    with pytest.raises(ArgumentError) as err:
        checkpoint_to_onnx(tmp_path / "m.ckpt", out, frames=0)
    assert (err.value.argument, str(err.value)) == ("frames", "frames must be an integer >= 1, got 0")
    with pytest.raises(ArgumentError, match=r"^output must be a path ending in \.onnx, got '.*m\.txt'$"):
        checkpoint_to_onnx(tmp_path / "m.ckpt", tmp_path / "m.txt")
    with pytest.raises(ArgumentError, match="^model_class must be an importable class path, got 'nowhere.Model'"):
        checkpoint_to_onnx(tmp_path / "m.ckpt", out, model_class="nowhere.Model")
    with pytest.raises(ArgumentError) as err:  # a model whose hyper-parameters do not say it
        feature_size({"hyper_parameters": {"width": 4}})
    assert str(err.value).startswith("cannot tell the feature size") and str(err.value).endswith("; pass features=N")
    assert err.value.spell({"features": "--features"}).endswith("; pass --features N")
    assert not out.exists()
