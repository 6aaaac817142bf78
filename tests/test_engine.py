"""The C engine (compress/native/engine.c) against PyTorch on the model rebuilt from the same
.psq: identical greedy transcripts and close log-probabilities on every test utterance of the
tiny run, with every kernel storage, on an unstructured- and a block-sparse model; the
`--engine c` commands; clear errors for files that are not a packed ctc_lstm; the standalone
checker under ASan/UBSan; and the bench section's JSON."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess

import pytest
import torch

from compress.cli import main
from compress.native import engine as E

STORAGES = ("auto", "dense", "csr", "bsr")
LOGPROB_TOL = 1e-3  # float32 sums in another order; an int8 level is exact in both


def _state(tiny_run) -> dict:
    out_dir, _, _ = tiny_run
    return dict(torch.load(out_dir / "model.ckpt", weights_only=True)["state_dict"])


def _pack(state: dict, folder, tiny_run, targets=None):
    """``state`` packed at 8 bits (matrices, or ``targets``) into ``folder/model.psq``, with the
    tiny run's recipe beside it."""
    from compress.export import pack

    out_dir, _, _ = tiny_run
    folder.mkdir(parents=True, exist_ok=True)
    targets = [k for k, v in state.items() if v.dim() >= 2] if targets is None else targets
    pack(state, str(folder / "model.psq"), bits=8, targets=targets)
    shutil.copy(out_dir / "results.json", folder / "results.json")
    return folder / "model.psq"


def _prune(state: dict, block: int | None, sparsity: float) -> dict:
    """Magnitude pruning of every matrix (rows x flattened inputs): single weights, or 1 x block groups."""
    out = {}
    for k, v in state.items():
        if v.dim() < 2:
            out[k] = v
            continue
        w = v.reshape(v.shape[0], -1).clone()  # (rows, cols)
        if block is None:
            keep = w.abs() > w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
        else:
            cols = w.shape[1]
            pad = (-cols) % block
            groups = torch.nn.functional.pad(w.abs(), (0, pad)).reshape(w.shape[0], -1, block).sum(-1)  # (rows, nb)
            cut = groups.flatten().kthvalue(max(int(sparsity * groups.numel()), 1)).values
            keep = (groups > cut).repeat_interleave(block, dim=1)[:, :cols]
        out[k] = (w * keep).reshape(v.shape)
    return out


@pytest.fixture(scope="module")
def sparse_models(tiny_run, tmp_path_factory):
    """The tiny run's weights pruned unstructured (80%), and the recipe's freshly initialized
    (dense) weights pruned in 1 x 16 blocks (50%: the trained ones are already 50% sparse
    unstructured, which would leave the kept blocks half empty), packed. The fresh weights are
    scaled 4x: then the gates saturate and the log-probabilities spread over several nats
    (those of a one-epoch model are close to uniform), a harder test of the arithmetic."""
    from compress.pipeline import build_model

    root = tmp_path_factory.mktemp("engine_sparse")
    torch.manual_seed(1)
    fresh = {k: 4.0 * v.detach() for k, v in build_model(tiny_run[2]).state_dict().items()}
    return {"unstructured": _pack(_prune(_state(tiny_run), None, 0.8), root / "unstructured", tiny_run),
            "block16": _pack(_prune(fresh, 16, 0.5), root / "block16", tiny_run),
            "block8": _pack(_prune(fresh, 8, 0.5), root / "block8", tiny_run)}


def _utterances(corpus):
    dm, _ = corpus
    return [dm.datasets[s][i][0] for s in ("test_voices", "test_sentences") for i in range(len(dm.datasets[s]))]


def _compare(psq, feats, storage: str) -> tuple[int, float, object]:
    """(identical transcripts, max |log-prob difference|, engine) of the engine against the
    PyTorch model rebuilt from ``psq`` by the pipeline."""
    from compress.pipeline import load_model

    model = load_model(psq).model
    engine = E.Engine(psq, E.EngineConfig.from_hparams(model.hparams, storage=storage))
    same, worst = 0, 0.0
    for f in feats:
        lengths = torch.tensor([f.shape[0]])
        with torch.no_grad():
            log_probs, n = model(f[None], lengths)  # (1, T', V)
            (text,) = model.transcribe(f[None], lengths)
        r = engine.run(f, logits=True)
        assert r.logits.shape == (int(n[0]), log_probs.shape[-1]) == (engine.out_frames(f.shape[0]), 29)
        ours = torch.from_numpy(r.logits).log_softmax(-1)
        worst = max(worst, float((ours - log_probs[0]).abs().max()))
        same += E.tokens_to_text(r.tokens) == text
    return same, worst, engine


@pytest.mark.parametrize("storage", STORAGES)
def test_tiny_run_transcripts_equal_torch(tiny_run, corpus, storage):
    out_dir, _, _ = tiny_run
    feats = _utterances(corpus)
    same, worst, engine = _compare(out_dir / "model.psq", feats, storage)
    print(f"storage {storage}: max |log-prob difference| {worst:.3g}")
    assert same == len(feats)
    assert worst < LOGPROB_TOL
    if storage != "auto":
        assert set(engine.info["storage"]) == {storage}


@pytest.mark.parametrize("kind", ["unstructured", "block16", "block8"])
@pytest.mark.parametrize("storage", STORAGES)
def test_sparse_models_transcripts_equal_torch(sparse_models, corpus, kind, storage):
    feats = _utterances(corpus)[:6]
    same, worst, engine = _compare(sparse_models[kind], feats, storage)
    print(f"{kind}, storage {storage}: max |log-prob difference| {worst:.3g}")
    assert same == len(feats)
    assert worst < LOGPROB_TOL
    if storage == "auto":  # the rule of engine.h
        info = engine.info
        for s, b, nnz, numel in zip(info["storage"], info["block"], info["nnz"], info["numel"]):
            if kind == "unstructured":
                assert s == "csr" and nnz / numel <= 0.21
            else:  # 1 x 8 masks seen as 1 x 16 would store the half-empty pairs too
                assert (s, b) == ("bsr", int(kind[5:])), (s, b, nnz, numel)


def test_ties_take_the_first_maximum(tiny_run, corpus, tmp_path):
    """Two head rows made equal (weights and a dominating bias) tie exactly on every frame, in
    both engines: torch.argmax takes the first, and so must the engine."""
    state = _state(tiny_run)
    w, b = state["head.weight"].clone(), state["head.bias"].clone()  # (V * upsample, H * dirs)
    for u in range(2):  # upsample 2: both CTC frames of each LSTM frame
        w[u * 29 + 5] = w[u * 29 + 3]
        b[u * 29 + 3] = b[u * 29 + 5] = 10.0
    psq = _pack(dict(state, **{"head.weight": w, "head.bias": b}), tmp_path / "ties", tiny_run)
    feats = _utterances(corpus)[:3]
    same, _, _ = _compare(psq, feats, "auto")
    assert same == len(feats)
    engine = E.Engine(psq, E.EngineConfig(subsample=4))
    assert engine.run(feats[0]).tokens == [3]  # 'a' (id 3) before 'c' (id 5), repeats merged


def test_rule_takes_dense_for_unstructured_half_sparsity(tiny_run):
    out_dir, _, _ = tiny_run
    engine = E.Engine(out_dir / "model.psq", E.EngineConfig(subsample=4))
    info = engine.info
    for s, nnz, numel in zip(info["storage"], info["nnz"], info["numel"]):
        # unstructured 50%: blocks of 4 or more hold a nonzero almost always (rule 1 fails), and
        # d >= PSQ_ENGINE_DENSE_MIN (rule 2)
        assert 0.25 <= nnz / numel <= 0.75
        assert s == "dense"
    assert info["stored"] == info["numel"]


def test_features_longer_than_the_memory_reload(tiny_run, corpus):
    out_dir, _, _ = tiny_run
    f = _utterances(corpus)[0]
    small = E.Engine(out_dir / "model.psq", E.EngineConfig(subsample=4, max_frames=8))
    big = E.Engine(out_dir / "model.psq", E.EngineConfig(subsample=4))
    assert small.run(f).tokens == big.run(f).tokens
    assert small.max_frames >= f.shape[0]
    with pytest.raises(ValueError, match=r"features must be an array of shape \(T >= 1, 80\), got \(3, 7\)"):
        big.run(torch.zeros(3, 7))


def test_defaults_are_ctclstms():
    from compress.models import CTCLSTM

    params = inspect.signature(CTCLSTM).parameters
    assert params["subsample"].default == E.DEFAULT_SUBSAMPLE
    assert params["upsample"].default == E.DEFAULT_UPSAMPLE
    assert E.EngineConfig.from_hparams({"subsample": 8}).strides == (2, 4)
    with pytest.raises(ValueError, match="storage must be 'auto', 'dense', 'csr' or 'bsr', got 'coo'"):
        E.EngineConfig(storage="coo")


# ---------------------------------------------------------------- commands


def test_evaluate_c_equals_torch(tiny_run, corpus, tmp_path, capsys):
    out_dir, results, _ = tiny_run
    psq = str(out_dir / "model.psq")
    out_c, out_t = tmp_path / "c.json", tmp_path / "t.json"
    assert main(["evaluate", psq, "--manifest-dir", str(corpus[1]), "--engine", "c", "-o", str(out_c)]) == 0
    assert main(["evaluate", psq, "--manifest-dir", str(corpus[1]), "--engine", "torch", "-o", str(out_t)]) == 0
    got = json.loads(out_c.read_text())
    assert got == json.loads(out_t.read_text())
    assert got == {s: m["packed"] for s, m in results["metrics"].items()}
    capsys.readouterr()


def test_transcribe_c_gives_the_models_text(tiny_run, corpus, capsys):
    out_dir, _, _ = tiny_run
    rows = corpus[0].datasets["test_voices"].manifest.rows[:2]
    wavs = [r["audio"] for r in rows]
    assert main(["transcribe", str(out_dir / "model.psq"), *wavs]) == 0
    torch_lines = capsys.readouterr().out
    assert main(["transcribe", str(out_dir / "model.psq"), "--engine", "c", *wavs]) == 0
    assert capsys.readouterr().out == torch_lines


def _cli_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_c_engine_errors_on_the_command_line(tiny_run, corpus, tmp_path, capsys):
    from compress.models import RNNT

    out_dir, _, _ = tiny_run
    wav = corpus[0].datasets["test_voices"].manifest.rows[0]["audio"]
    err = _cli_error(["transcribe", str(out_dir / "model.ckpt"), "--engine", "c", wav], capsys)
    assert "MODEL must be a .psq file for the C engine" in err
    rnnt = RNNT(conv_channels=16, encoder_hidden=16, encoder_layers=1, embed_dim=8, pred_hidden=16, joint_dim=16)
    psq = _pack(dict(rnnt.state_dict()), tmp_path / "rnnt", tiny_run)
    err = _cli_error(["evaluate", str(psq), "--manifest-dir", str(corpus[1]), "--engine", "c"], capsys)
    assert "MODEL: " in err and "the C engine cannot run it" in err
    assert "not a ctc_lstm file: it has no tensor lstm.weight_ih_l0" in err


# ---------------------------------------------------------------- bad files


def _engine_error(psq, **config) -> E.EngineError:
    with pytest.raises(E.EngineError) as info:
        E.Engine(psq, E.EngineConfig(subsample=4, **config))
    return info.value


def test_bad_files_name_what_is_wrong(tiny_run, tmp_path):
    from compress.export import pack
    from compress.models import RNNT

    state = _state(tiny_run)
    rnnt = RNNT(conv_channels=16, encoder_hidden=16, encoder_layers=1, embed_dim=8, pred_hidden=16, joint_dim=16)
    err = _engine_error(_pack(dict(rnnt.state_dict()), tmp_path / "rnnt", tiny_run))
    assert (err.code, err.tensor) == (2, "lstm.weight_ih_l0") and "not a ctc_lstm" in str(err)

    pack({"w": torch.randn(4, 4)}, str(tmp_path / "other.psq"), bits=8)
    err = _engine_error(tmp_path / "other.psq")
    assert (err.code, err.tensor) == (2, "frontend.conv1.weight")

    raw = _pack(state, tmp_path / "raw", tiny_run, targets=[k for k, v in state.items() if v.dim() >= 2
                                                             and k != "head.weight"])
    err = _engine_error(raw)
    assert (err.code, err.tensor) == (5, "head.weight") and "RAW" in err.message

    missing = _pack({k: v for k, v in state.items() if k != "lstm.bias_hh_l0_reverse"}, tmp_path / "missing", tiny_run)
    err = _engine_error(missing)
    assert (err.code, err.tensor) == (3, "lstm.bias_hh_l0_reverse") and "missing tensor" in err.message

    shaped = dict(state, **{"frontend.conv2.weight": state["frontend.conv2.weight"][:, :16]})
    err = _engine_error(_pack(shaped, tmp_path / "shape", tiny_run))
    assert (err.code, err.tensor) == (4, "frontend.conv2.weight")
    assert err.message == "expected shape (32, 32, 5), got (32, 16, 5)"

    err = _engine_error(tiny_run[0] / "model.psq", upsample=3)  # 58 head rows
    assert (err.code, err.tensor) == (4, "head.weight") and "upsample 3" in err.message

    extra = _pack(dict(state, **{"extra.weight": torch.randn(3, 3)}), tmp_path / "extra", tiny_run)
    err = _engine_error(extra)
    assert (err.code, err.tensor) == (2, "extra.weight")

    truncated = (tiny_run[0] / "model.psq").read_bytes()[:-9]
    with pytest.raises(E.EngineError, match="FormatError|truncated|C decoder"):
        E.Engine(truncated, E.EngineConfig(subsample=4))


# ---------------------------------------------------------------- C: warnings, sanitizers

STRICT = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Wconversion", "-Werror"]


def test_compiles_clean_with_strict_warnings(tmp_path):
    from compress import native

    cc = native.compiler()
    if not cc:
        pytest.skip("no C compiler")
    for name in ("engine.c", "engine_check.c"):
        proc = subprocess.run([*cc, *STRICT, "-c", native.source_path(name), "-o", str(tmp_path / "x.o")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_engine_check_under_sanitizers(tiny_run, sparse_models, corpus, tmp_path):
    """engine_check (psq.c + kernels.c + engine.c, ASan + UBSan) on real files: the same tokens
    as the library through ctypes, and its refusals of short buffers and frame counts."""
    from compress import native

    cc = native.compiler()
    if not cc:
        pytest.skip("no C compiler")
    tool = tmp_path / "engine_check"
    sources = [native.source_path(s) for s in ("engine_check.c", "psq.c", "kernels.c", "engine.c")]
    proc = subprocess.run([*cc, *native.SANITIZE, "-std=c99", "-o", str(tool), *sources, "-lm"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    f = _utterances(corpus)[0]
    feats = tmp_path / "f.f32"
    f.numpy().astype("float32").tofile(feats)
    files = [tiny_run[0] / "model.psq", sparse_models["unstructured"], sparse_models["block16"]]
    for psq in files:
        for storage in range(4):
            run = subprocess.run([str(tool), str(psq), str(feats), "2", "2", "2", str(storage), "0"],
                                 capture_output=True, text=True)
            assert run.returncode == 0, run.stdout + run.stderr
            tokens = [int(t) for t in run.stdout.splitlines()[0].split()[1:]]
            expected = E.Engine(psq, E.EngineConfig(subsample=4, storage=STORAGES[storage])).run(f).tokens
            assert tokens == expected


# ---------------------------------------------------------------- bench


def test_bench_section_json(tiny_run, tmp_path):
    import argparse

    from compress.bench import engine as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--engine-run", str(tiny_run[0]), "--engine-reps", "1"])
    args.out, args.threads = str(tmp_path), 1
    result = bench.run(args)
    saved = json.loads((tmp_path / "engine.json").read_text())
    assert saved == json.loads(json.dumps(result, sort_keys=True))
    for key in ("torch", "c"):
        assert set(saved[key]) == {"seconds", "rtf", "wer", "cer"}
        assert all(isinstance(v, float) for v in saved[key].values())
    for key in ("speedup", "target", "audio_s"):
        assert isinstance(saved[key], float)
    assert isinstance(saved["target_met"], bool) and isinstance(saved["same_wer"], bool)
    assert saved["same_wer"] and saved["identical_transcripts"] == saved["utterances"] > 0
    assert len(saved["storage"]) == len(saved["block"]) == len(saved["density"]) == 7
    assert "speed-up" in saved["markdown"] and ("PASS" in saved["markdown"] or "MISS" in saved["markdown"])
