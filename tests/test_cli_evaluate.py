"""`compress evaluate` and `compress transcribe` on one tiny compress-train run (the oracle is
that run's results.json and the model's own `transcribe`), and their one-line errors."""

import json
import shutil

import pytest
import torch

from compress.cli import main


@pytest.mark.parametrize("name", ["model.ckpt", "model.psq"])
def test_evaluate_gives_the_runs_figures(tiny_run, corpus, tmp_path, name, capsys):
    out_dir, results, _ = tiny_run
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(out_dir / name), "--manifest-dir", str(corpus[1]), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got == {s: m["trained"] for s, m in results["metrics"].items()}
    assert got == {s: m["packed"] for s, m in results["metrics"].items()}
    assert "| test_voices |" in text and "| test_sentences |" in text and f"wrote {out}" in text


def test_evaluate_needs_only_test_manifests_and_a_ckpt_alone(tiny_run, corpus, tmp_path, capsys):
    out_dir, results, _ = tiny_run
    only = tmp_path / "only_test"
    only.mkdir()
    rows = [json.loads(line) for line in (corpus[1] / "test_voices.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["audio"] = str(corpus[1] / row["audio"])  # absolute: the WAVs stay where they are
    (only / "test_voices.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out_dir / "model.ckpt", alone / "model.ckpt")  # no recipe beside it: its hyperparameters
    out = tmp_path / "m.json"
    assert main(["evaluate", str(alone / "model.ckpt"), "--manifest-dir", str(only), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == {"test_voices": results["metrics"]["test_voices"]["trained"]}
    # and the .psq with its recipe named explicitly
    shutil.copy(out_dir / "model.psq", alone / "model.psq")
    assert main(["evaluate", str(alone / "model.psq"), "--recipe", str(out_dir / "results.json"),
                 "--manifest-dir", str(only), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == {"test_voices": results["metrics"]["test_voices"]["packed"]}
    capsys.readouterr()


@pytest.mark.parametrize("name", ["model.ckpt", "model.psq"])
def test_transcribe_gives_the_models_text(tiny_run, corpus, name, capsys):
    from compress.pipeline import build_model

    out_dir, _, cfg = tiny_run
    dm, folder = corpus
    ds = dm.datasets["test_voices"]
    wavs = [row["audio"] for row in ds.manifest.rows[:3]]
    model = build_model(cfg)
    model.load_state_dict(torch.load(out_dir / "model.ckpt", weights_only=True)["state_dict"])
    model.eval()
    expected = []
    for i in range(3):
        feats = ds[i][0]
        (t,) = model.transcribe(feats[None], torch.tensor([feats.shape[0]]))
        expected.append(t)
    assert main(["transcribe", str(out_dir / name), *wavs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{w}\t{t}" for w, t in zip(wavs, expected)]


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and "Traceback" not in cap.err, cap.err
    return cap.err


def test_errors_name_the_argument(tiny_run, corpus, tmp_path, capsys):
    out_dir, _, _ = tiny_run
    wav = corpus[0].datasets["test_voices"].manifest.rows[0]["audio"]
    ckpt, psq = str(out_dir / "model.ckpt"), str(out_dir / "model.psq")
    err = _error(["transcribe", ckpt, str(tmp_path / "missing.wav")], capsys)
    assert err == f"compress: error: AUDIO must be a WAV file, got {str(tmp_path / 'missing.wav')!r} (no such file)\n"
    (tmp_path / "notes.wav").write_text("not audio at all")
    err = _error(["transcribe", ckpt, wav, str(tmp_path / "notes.wav")], capsys)
    assert err.startswith(f"compress: error: AUDIO must be a PCM WAV file, got {str(tmp_path / 'notes.wav')!r} (")
    err = _error(["evaluate", str(tmp_path / "missing.ckpt"), "--manifest-dir", str(corpus[1])], capsys)
    assert f"MODEL must be a .ckpt or .psq file, got {str(tmp_path / 'missing.ckpt')!r} (no such file)" in err
    (tmp_path / "model.pt").write_bytes(b"x")
    err = _error(["transcribe", str(tmp_path / "model.pt"), wav], capsys)
    assert "MODEL must be a .ckpt (Lightning checkpoint) or .psq (packed file), got " in err and "model.pt'" in err
    shutil.copy(psq, tmp_path / "model.psq")  # a .psq without its recipe
    err = _error(["evaluate", str(tmp_path / "model.psq"), "--manifest-dir", str(corpus[1])], capsys)
    assert "MODEL: " in err and "found no recipe beside it (results.json or .hydra/config.yaml" in err
    assert "pass --recipe RUN_DIR/results.json" in err
    err = _error(["transcribe", psq, "--recipe", str(tmp_path / "nope.json"), wav], capsys)
    assert "--recipe must be a results.json or a Hydra .hydra/config.yaml, got " in err and "(no such file)" in err
    err = _error(["evaluate", ckpt, "--manifest-dir", str(tmp_path / "nodir")], capsys)
    assert f"--manifest-dir must be a folder with test*.jsonl manifests, got {str(tmp_path / 'nodir')!r} " \
        "(no such folder)" in err
    err = _error(["evaluate", ckpt, "--manifest-dir", str(tmp_path)], capsys)
    assert f"--manifest-dir must be a folder with at least one test*.jsonl, got {str(tmp_path)!r} " \
        "(holding no .jsonl)" in err


@pytest.mark.parametrize("command", ["evaluate", "transcribe"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: compress " + command in text and "--recipe" in text and "MODEL" in text


def test_psq_beside_a_hydra_config(tiny_run, corpus, tmp_path, capsys):
    from omegaconf import OmegaConf

    out_dir, results, cfg = tiny_run
    run_dir = tmp_path / "hydra_run"
    (run_dir / ".hydra").mkdir(parents=True)
    shutil.copy(out_dir / "model.psq", run_dir / "model.psq")
    # What Hydra writes: the composed config without the hydra key, interpolations unresolved.
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run_dir / ".hydra" / "config.yaml")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run_dir / "model.psq"), "--manifest-dir", str(corpus[1]), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == {s: m["packed"] for s, m in results["metrics"].items()}
    capsys.readouterr()
