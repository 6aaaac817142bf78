"""The Hydra recipes end to end, in tiny form: a 1-epoch run through the compose API, a
two-config multirun through the console script, the report, and config errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices...}
    return cfg


def test_every_compression_option_composes_and_builds(data_dir):
    from compress.train import build_callbacks

    expected = {"none": [], "qreg8": ["QuantizationRegularizer"], "sparse50": ["GradualSparsifier"],
                "sparse50_qreg8": ["GradualSparsifier", "QuantizationRegularizer"],
                "sparse75_qreg4": ["GradualSparsifier", "QuantizationRegularizer"],
                "sparse75_qreg5": ["GradualSparsifier", "QuantizationRegularizer"],
                "sparse75_qreg6": ["GradualSparsifier", "QuantizationRegularizer"],
                "sparse75_qreg4_grad": ["GradualSparsifier", "QuantizationRegularizer"],
                "sparse75": ["GradualSparsifier"],
                "sparse75_fq4": ["FakeQuantQAT", "GradualSparsifier"],
                "sparse50_fq8": ["FakeQuantQAT", "GradualSparsifier"]}
    for option, classes in expected.items():
        cfg = compose([f"compression={option}"])
        assert sorted(type(cb).__name__ for cb in build_callbacks(cfg)) == classes
    cfg = compose(["compression=sparse75_qreg4"])
    (sp,) = [cb for cb in build_callbacks(cfg) if type(cb).__name__ == "GradualSparsifier"]
    assert sp.final_sparsity == 0.75


@pytest.mark.slow
def test_one_epoch_run_writes_every_output(tmp_path, data_dir):
    import torch

    from compress.decoder.fast import load
    from compress.train import run

    cfg = compose(["experiment=tiny", f"data.data_dir={data_dir}", "export.onnx=true"])
    results = run(cfg, tmp_path)
    for name in ["model.ckpt", "model.psq", "model.onnx", "results.json", "results.md"]:
        assert (tmp_path / name).is_file(), name
    # Only the outputs and the TensorBoard folder: no temporary file left in the run directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.ckpt", "model.psq", "model.onnx", "results.json", "results.md", "tb"])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert results["recipe"] == "ctc_lstm+sparse50_qreg8"
    assert set(results["metrics"]) == {"test_voices", "test_sentences"}
    # The model rebuilt from the packed file scores exactly as the trained one ...
    for split, m in results["metrics"].items():
        assert m["trained"] == m["packed"], split
    assert results["packed_matches_trained"] is True
    # ... because it holds exactly the trained (snapped) weights.
    # Loadable without trusting pickled objects: what `compress export` does by default.
    ckpt = torch.load(tmp_path / "model.ckpt", map_location="cpu", weights_only=True)
    decoded = load(tmp_path / "model.psq")
    assert decoded.keys() == ckpt["state_dict"].keys()
    for name, t in ckpt["state_dict"].items():
        assert torch.equal(decoded[name], t), name
    assert results["packed_bytes"] < results["fp32_bytes"] / 4
    assert results["onnx_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert all(abs(r["sparsity"] - 0.5) < 0.01 and r["bits"] == 8 for r in results["layers"])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["packed_bytes"] == (tmp_path / "model.psq").stat().st_size
    assert "| test_voices |" in (tmp_path / "results.md").read_text()


def _cli(args, tmp_path, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow
def test_multirun_of_two_configs_and_report(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    r = _cli([str(BIN / "compress-train"), "-m", "experiment=tiny", "compression=none,sparse50",
              f"data.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.rglob("results.json"))
    assert runs == ["0_none", "1_sparse50"]
    none = json.loads((sweep / "0_none" / "results.json").read_text())
    assert none["layers"] == [] and none["packed_matches_trained"]
    sparse = json.loads((sweep / "1_sparse50" / "results.json").read_text())
    # Pruned without a regularizer: rounded to int8 after training (its packed WER may
    # differ from the trained one; the results say which).
    assert {r["bits"] for r in sparse["layers"]} == {8} and sparse["layers"]
    assert isinstance(sparse["packed_matches_trained"], bool)
    rep = _cli([str(BIN / "compress"), "report", str(sweep), "-o", str(tmp_path / "table.md")], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "ctc_lstm+none" in rep.stdout and "ctc_lstm+sparse50" in rep.stdout
    assert rep.stdout.count("| test_voices |") == 2
    assert (tmp_path / "table.md").read_text().strip() == rep.stdout.strip()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("compression=sparse90", "Could not find 'compression/sparse90'"),
        ("compression.gradual_sparsifier.final_sparsity=1.5",
         "compression.gradual_sparsifier.final_sparsity must be a number in [0, 1), got 1.5"),
        ("compression.quantization_regularizer.bits=9",
         "compression.quantization_regularizer.bits must be an integer in [2, 8], got 9"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, override, expected):
    r = _cli([str(BIN / "compress-train"), override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode != 0
    assert expected in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_report_errors_are_one_line(tmp_path):
    r = _cli([str(BIN / "compress"), "report", str(tmp_path)], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == f"compress: error: DIR must be a compress-train run or multirun directory, " \
        f"got {str(tmp_path)!r} (no results.json under it)"


SMALL = {
    "rnnt": ["~model.hidden_size", "~model.num_layers", "+model.encoder_hidden=32", "+model.encoder_layers=1",
             "+model.pred_hidden=32", "+model.joint_dim=32", "+model.embed_dim=16"],
    "conformer_ctc": ["~model.hidden_size", "model.num_layers=1", "+model.d_model=32", "+model.num_heads=2",
                      "+model.ffn_dim=64", "+model.kernel_size=3"],
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(SMALL))
def test_other_models_run_through_the_recipe(tmp_path, data_dir, model):
    from compress.train import run

    cfg = compose(["experiment=tiny", f"model={model}", f"data.data_dir={data_dir}", *SMALL[model]])
    results = run(cfg, tmp_path)
    assert results["recipe"] == f"{model}+sparse50_qreg8"
    assert results["packed_matches_trained"] is True
    assert results["layers"] and all(abs(r["sparsity"] - 0.5) < 0.01 for r in results["layers"])


def test_rnnt_full_experiment_composes():
    cfg = compose(["experiment=rnnt_full"])
    assert cfg.model._target_ == "compress.models.RNNT"
    assert cfg.trainer.max_epochs == 30 and cfg.data.corpus.num_train == 16000
    assert set(cfg.compression) == {"gradual_sparsifier", "quantization_regularizer"}


def test_init_from_fine_tunes_a_trained_checkpoint_and_refuses_another_model(tmp_path, data_dir):
    import torch

    from compress.recipe_checks import ConfigError
    from compress.train import run

    base = ["experiment=tiny", f"data.data_dir={data_dir}"]
    run(compose(base + ["compression=none"]), tmp_path / "fp32")
    ckpt = tmp_path / "fp32" / "model.ckpt"
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    seen = {}

    class First(__import__("pytorch_lightning").Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    from compress import train as train_mod

    real = train_mod.build_callbacks
    train_mod.build_callbacks = lambda cfg: real(cfg) + [First()]
    try:
        results = run(compose(base + ["compression=sparse75_qreg4", f"init_from={ckpt}"]), tmp_path / "ft")
    finally:
        train_mod.build_callbacks = real
    assert all(torch.equal(seen[k], trained[k]) for k in trained)  # training started from the checkpoint
    assert results["overall_sparsity"] >= 0.74 and results["packed_matches_trained"]
    with pytest.raises(ConfigError, match="init_from: the checkpoint .* does not match the recipe's model: .*shape"):
        run(compose(base + ["compression=none", f"init_from={ckpt}", "model.hidden_size=16"]), tmp_path / "bad")
    with pytest.raises(ConfigError, match="init_from: no checkpoint at"):
        run(compose(base + ["compression=none", f"init_from={tmp_path / 'missing.ckpt'}"]), tmp_path / "bad2")


def test_default_run_and_full_experiment_shapes():
    # The quick default (make demo) and the longer run the benchmark uses.
    cfg = compose([])
    assert cfg.trainer.max_epochs == 6 and cfg.data.batch_size == 16
    assert cfg.data.corpus.num_train == 8000 and cfg.threads == 2
    assert cfg.compression.gradual_sparsifier.final_sparsity == 0.5
    assert cfg.compression.quantization_regularizer.bits == 8
    full = compose(["experiment=full"])
    assert full.trainer.max_epochs == 15 and full.data.batch_size == 48
    assert full.data.corpus.num_train == 8000 and full.model == cfg.model


def test_benchmark_trains_the_full_experiment():
    import argparse

    from compress.bench import training

    opts = argparse.Namespace(size="full", threads=1, epochs=None, data_dir=None)
    assert training.base_overrides(opts)[0] == "experiment=full"
    opts.size = "tiny"
    assert training.base_overrides(opts)[0] == "experiment=tiny"
