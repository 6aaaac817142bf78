"""The accuracy/size benchmark: the tiny run end to end, the baselines, and the target logic.

The tiny run checks the machinery (every row packed, decoded and tested; sizes ordered;
the baselines at their sparsity; files written), not the figures.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import pytorch_lightning as pl
import torch

from compress.bench import accuracy, baselines, training
from compress.decoder.fast import load
from compress.quant import grid
from compress.sparsity.schedule import sparsity_at

KEYS = ["fp32", "ptq8", "oneshot50_ptq8", "lightning50_ptq8", "sparse50_ptq8", "sparse50_fq8", "sparse50_qreg8",
        "qreg8", "lightning75_fp32", "sparse75_fp32", "ptq4", "oneshot75_ptq4", "lightning75_ptq4", "sparse75_ptq4", "sparse75_fq4", "sparse75_qreg4",
        "ptq6", "oneshot75_ptq6", "sparse75_qreg6", "ptq5", "oneshot75_ptq5", "sparse75_qreg5",
        "qreg6", "qreg4", "ptq2", "qreg2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    data = tmp_path_factory.mktemp("corpus")
    args = argparse.Namespace(size="tiny", jobs=2, threads=1, out=str(out), data_dir=str(data), seeds=2)
    return accuracy.run(args), out


def _rows(results):
    return {r["key"]: r for r in results["rows"] if r.get("seed", 0) == 0}


def _exact(sparsity, n):
    return int(sparsity * n + 0.5)


def test_tiny_run_writes_every_row_and_both_files(tiny):
    results, out = tiny
    assert [e["key"] for e in results["entries"]] == KEYS
    seeded = {r["key"] for r in results["rows"] if r.get("seed", 0) == 1}
    assert seeded == {"fp32", "ptq4", "oneshot75_ptq4", "sparse75_ptq4", "sparse75_fq4", "sparse75_qreg4"}
    by = {e["key"]: e for e in results["entries"]}
    assert by["sparse75_qreg4"]["seeds"] == [0, 1] and by["sparse75_qreg5"]["seeds"] == [0]
    on_disk = json.loads((out / "accuracy.json").read_text())
    assert on_disk["rows"] == results["rows"] and on_disk["targets"] == results["targets"]
    md = (out / "accuracy.md").read_text()
    for row in results["rows"]:
        assert f"| {baselines.label(row)} |" in md
        assert set(row["metrics"]) == {"test_voices", "test_sentences"}
        for split in row["metrics"].values():
            assert math.isfinite(split["wer"]) and split["wer"] >= 0 and math.isfinite(split["cer"])
    assert "± " in md  # the rows of two seeds
    # loss: 75% + 4, 75% + 6, 50% + 8 bits; defaults: 8, 6, 4, 2 bits;
    # beat: one-shot, ModelPruning, sparsifier alone, fake-quant
    assert md.count("**PASS**") + md.count("**MISS**") == 11
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and results["plot"] == "accuracy.png"
    assert results["command"] in md and "wall time" in md and results["machine"]["torch"] in md
    assert not list(out.glob("**/*.tmp")) and not list(out.glob("**/.*.tmp"))


def test_tiny_sizes_are_those_of_the_packed_files_and_ordered(tiny):
    results, out = tiny
    rows = _rows(results)
    for key, r in rows.items():
        path = out / "accuracy_runs" / r["training"] / f"{key}.psq"
        assert path.stat().st_size == r["bytes"]
    for bits, pct in ((8, 50), (4, 75)):
        dense = rows[f"ptq{bits}"]["bytes"]
        assert dense < rows["fp32"]["bytes"]
        for key in (f"oneshot{pct}_ptq{bits}", f"lightning{pct}_ptq{bits}", f"sparse{pct}_qreg{bits}",
                    f"sparse{pct}_ptq{bits}", f"sparse{pct}_fq{bits}"):
            assert rows[key]["bytes"] < dense, key
            assert rows[key]["decoded_sparsity"] >= pct / 100 - 0.01, key
    assert rows["ptq4"]["bytes"] < rows["ptq5"]["bytes"] < rows["ptq6"]["bytes"] < rows["ptq8"]["bytes"]
    assert rows["sparse75_qreg4"]["bytes"] < rows["sparse75_qreg5"]["bytes"] < rows["sparse75_qreg6"]["bytes"]
    for key in ("lightning75_fp32", "sparse75_fp32"):  # pruned, not rounded: stored as fp32, 75% zeros
        # (the same tensors as the fp32 row; only the recipe name in the header differs)
        assert abs(rows[key]["bytes"] - rows["fp32"]["bytes"]) <= 64 and rows[key]["decoded_sparsity"] >= 0.74, key
    assert rows["qreg8"]["decoded_sparsity"] < 0.2  # the regularizer alone prunes nothing (rounding adds a few zeros)
    # The fp32 row is a passthrough of the trained weights: decoding gives them back exactly.
    ckpt = torch.load(out / "accuracy_runs" / "fp32" / "model.ckpt", map_location="cpu", weights_only=False)
    decoded = load(out / "accuracy_runs" / "fp32" / "fp32.psq")
    assert decoded.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(decoded[k], ckpt["state_dict"][k]) for k in decoded)


def test_tiny_lightning_baseline_is_at_the_target_sparsity(tiny):
    results, out = tiny
    epochs = results["epochs"]
    for name, sparsity in (("lightning50", 0.5), ("lightning75", 0.75)):
        sd = torch.load(out / "accuracy_runs" / name / "model.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        assert not [k for k in sd if k.endswith(("_orig", "_mask"))]  # pruning made permanent
        zeros = results["trainings"][name]["target_zeros"]
        assert len(zeros) == 7
        for param, (z, n) in zeros.items():
            assert int((sd[param] == 0).sum()) == z
            # torch rounds each step's count: at most one weight per pruning step off.
            assert abs(z - _exact(sparsity, n)) <= epochs, (name, param, z, n)


def _wers(rows):
    """key -> {seed: WER on test_voices in %}."""
    out = {}
    for r in rows:
        out.setdefault(r["key"], {})[r.get("seed", 0)] = 100 * r["metrics"]["test_voices"]["wer"]
    return out


def _mean(values):
    return sum(values) / len(values)


def _std(values):
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0


def test_tiny_targets_are_computed_from_the_numbers(tiny):
    results, _ = tiny
    assert results["targets"] == accuracy.check_targets(results["rows"], "test_voices")
    w = _wers(results["rows"])
    mean = {k: _mean(list(v.values())) for k, v in w.items()}
    std = {k: _std(list(v.values())) for k, v in w.items()}
    assert [t["kind"] for t in results["targets"]] == ["loss"] * 3 + ["defaults"] * 4 + ["beat"] * 4
    loss, defaults, beat = results["targets"][:3], results["targets"][3:7], results["targets"][7:]
    for t, key, limit in zip(loss, ("sparse75_qreg4", "sparse75_qreg6", "sparse50_qreg8"), (1.0, 0.5, 0.5)):
        fp32 = _mean([w["fp32"][s] for s in w[key]])  # fp32 on the seeds the row has
        assert t["value"] == pytest.approx(mean[key] - fp32) and t["pass"] == (t["value"] <= limit + 1e-9)
    assert [t["value"] for t in defaults] == pytest.approx([mean[f"qreg{b}"] - mean[f"ptq{b}"] for b in (8, 6, 4, 2)])
    assert [t["pass"] for t in defaults] == [mean[f"qreg{b}"] <= mean[f"ptq{b}"] + 1e-9 for b in (8, 6, 4, 2)]
    peers = ["oneshot75_ptq4", "lightning75_ptq4", "sparse75_ptq4", "sparse75_fq4"]
    ours = "sparse75_qreg4"
    assert [t["value"] for t in beat] == pytest.approx([mean[ours] - mean[k] for k in peers])
    assert [t["pass"] for t in beat] == [mean[ours] < mean[k] - max(std[ours], std[k]) for k in peers]


def _hand_rows(wers):
    """Rows of the hard setting from ``{key: [WER of seed 0, seed 1, ...]}``."""
    methods = {"fp32": "fp32", "sparse75_qreg4": "ours", "lightning75_ptq4": "lightning", "sparse75_fq4": "fakequant"}
    return [{"key": k, "method": methods[k], "setting": None if k == "fp32" else "hard", "bits": 4, "seed": s,
             "target_sparsity": 0.75, "bytes": 1, "decoded_sparsity": 0.75, "valid": {"wer": 0.1, "cer": 0.0},
             "metrics": {sp: {"wer": v / 100, "cer": 0.0} for sp in ("test_voices", "test_sentences")}}
            for k, vs in wers.items() for s, v in enumerate(vs)]


@pytest.mark.parametrize("ours, lightning, expected", [
    ([9.0, 9.2, 9.4], [10.0, 10.2, 10.4], [True, True]),  # lower by 1.0 > std 0.2: a win
    ([9.0, 9.8, 10.6], [10.0, 10.2, 10.4], [False, False]),  # mean 9.8: lower by 0.4 < std 0.8: no win
    ([9.5], [10.0], [True, True]),  # one seed: lower is enough
    ([10.0], [10.0], [False, False]),  # a tie is no win
])
def test_target_logic_on_hand_made_numbers(ours, lightning, expected):
    fp32 = [9.0] * len(ours)
    targets = accuracy.check_targets(_hand_rows({"fp32": fp32, "sparse75_qreg4": ours, "lightning75_ptq4": lightning,
                                                 "sparse75_fq4": lightning}))
    assert [t["kind"] for t in targets] == ["loss", "beat", "beat"]  # only the rows that were run
    assert targets[0]["value"] == pytest.approx(_mean(ours) - 9.0)
    assert targets[0]["pass"] == (_mean(ours) - 9.0 <= 1.0 + 1e-9)
    assert [t["pass"] for t in targets[1:]] == expected
    assert targets[1]["limit"] == pytest.approx(-max(_std(ours), _std(lightning)))


def test_groups_choose_the_trainings_and_fp32_is_always_there():
    settings = {"easy": {"recipe": "sparse50_qreg8", "sparsity": 0.5, "schedule": "cubic", "start_epoch": 0,
                         "end_epoch": None, "bits": 8, "clip": "max", "granularity": "channel"},
                "hard": {"recipe": "sparse75_qreg4", "sparsity": 0.75, "schedule": "cubic", "start_epoch": 0,
                         "end_epoch": None, "bits": 4, "clip": "mse", "granularity": "channel"}}
    names = [j["name"] for j in accuracy.plan(settings, ["peers"])]
    assert names == ["fp32", "fq75", "fq50"]
    seeded = accuracy.plan(settings, ["core", "peers", "ablation", "bits"], seeds=3)
    names = [j["name"] for j in seeded]
    assert names[-1] == "ours75_5"  # LAST: after the other seeds
    assert names.index("ours75_s2") > names.index("ours75_s1") > names.index("fq75")
    s1 = next(j for j in seeded if j["name"] == "ours75_s1")
    assert s1["extra"] == ["seed=1", "data.corpus.seed=0"] and [r["seed"] for r in s1["rows"]] == [1]
    fp32_s1 = next(j for j in seeded if j["name"] == "fp32_s1")
    assert [r["key"] for r in fp32_s1["rows"]] == ["fp32", "ptq4", "oneshot75_ptq4"]  # the hard setting only
    defaults = accuracy.plan(settings, ["defaults"])
    assert [j["name"] for j in defaults] == ["fp32", "qreg4", "qreg2", "qreg6"]  # qreg6 is in LAST
    assert defaults[1]["extra"] == ["compression.quantization_regularizer.bits=4"]
    assert {"ptq6", "ptq4", "ptq2"} <= {r["key"] for r in defaults[0]["rows"]}
    everything = accuracy.plan(settings, list(accuracy.GROUPS))
    assert [j["name"] for j in everything][:5] == ["fp32", "lightning50", "lightning75", "ours50", "ours75"]
    assert {r["key"] for r in everything[0]["rows"]} >= {"ptq5", "ptq6", "oneshot75_ptq6"}
    sparse75 = next(j for j in everything if j["name"] == "sparse75")["rows"][0]
    assert (sparse75["clip"], sparse75["bits"]) == ("mse", 4)  # rounded on the grid of the setting's recipe
    with pytest.raises(ValueError, match="--groups must be"):
        accuracy.check_groups("core,nope", accuracy.GROUPS)


def test_oneshot_prunes_exact_counts_of_the_smallest_weights():
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(37, 11, generator=gen), "b": torch.randn(5, 3, 7, generator=gen),
               "c": torch.tensor([0.5, -0.5, 0.5, 0.5])}  # ties: the count must still be exact
    for sparsity in (0.5, 0.75, 0.3):
        pruned, masks = baselines.prune_oneshot(weights, sparsity)
        for n, w in weights.items():
            assert int((~masks[n]).sum()) == _exact(sparsity, w.numel()) == int((pruned[n] == 0).sum())
            kept, dropped = w[masks[n]].abs(), w[~masks[n]].abs()
            assert kept.min() >= dropped.max()
            assert torch.equal(pruned[n][masks[n]], w[masks[n]])
    with pytest.raises(ValueError, match="sparsity"):
        baselines.prune_oneshot(weights, 1.0)


def test_ptq_snaps_to_the_grid_with_the_regularizers_clipping():
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    w[w.abs() < 0.3] = 0.0
    for bits, clip in ((8, "max"), (4, "mse")):
        snapped, scales = baselines.ptq({"w": w}, bits)
        assert torch.equal(scales["w"], grid.compute_scale(w, bits, "channel", clip))
        assert torch.equal(snapped["w"], grid.snap(w, scales["w"], bits))
        assert bool((snapped["w"][w == 0] == 0).all())
    with pytest.raises(TypeError, match="weights\\['i'\\]"):
        baselines.ptq({"i": torch.ones(2, 2, dtype=torch.int32)}, 8)


@pytest.mark.parametrize("epochs, final", [(1, 0.5), (4, 0.5), (6, 0.75), (12, 0.75)])
def test_incremental_amounts_follow_the_sparsifier_schedule(epochs, final):
    amount = baselines.incremental_amounts(final, epochs)
    for e in range(epochs):
        # After the prune at the end of epoch e: what the sparsifier installs at the start of e + 1.
        want = sparsity_at(e + 1, final, 0, max(epochs - 1, 0))
        assert baselines.cumulative_sparsity(amount, e + 1) == pytest.approx(want, abs=1e-12)
        assert 0.0 <= amount(e) < 1.0
    assert baselines.cumulative_sparsity(amount, epochs) == pytest.approx(final)
    with pytest.raises(ValueError, match="max_epochs"):
        baselines.incremental_amounts(final, 0)


class _Toy(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(32, 48)
        self.head = torch.nn.Linear(48, 3)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.head(torch.relu(self.lin(x))), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_pruning_reaches_the_schedule_at_each_epoch_end():
    torch.manual_seed(0)
    model, seen = _Toy(), []
    data = torch.utils.data.TensorDataset(torch.randn(32, 32), torch.randint(0, 3, (32,)))

    class Record(pl.Callback):  # runs after ModelPruning's epoch-end hook (callbacks run in order)
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append({n: int((w == 0).sum()) for n, w in (("lin", pl_module.lin.weight), ("head", pl_module.head.weight))})

    epochs, final = 5, 0.75
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[baselines.lightning_pruning(model, final, epochs), Record()])
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    assert len(seen) == epochs and seen[-1]["lin"] == pytest.approx(final * 32 * 48, abs=epochs)
    for e, zeros in enumerate(seen):
        want = sparsity_at(e + 1, final, 0, epochs - 1)
        for name, n in (("lin", 32 * 48), ("head", 48 * 3)):
            assert abs(zeros[name] - _exact(want, n)) <= e + 1, (e, name)
    assert "lin.weight" in dict(model.named_parameters())  # permanent: no weight_orig left


def test_options_under_the_dispatcher_are_the_prefixed_ones():
    # Another section's --epochs must not leak into this one's trainings.
    args = argparse.Namespace(epochs=3, jobs=None, accuracy_size="tiny", accuracy_epochs=None, accuracy_jobs=1,
                              accuracy_data_dir=None, accuracy_reuse=False, threads=2, out=None)
    opts = accuracy._options(args)
    assert (opts.size, opts.epochs, opts.jobs, opts.threads) == ("tiny", None, 1, 2)
    assert "trainer.max_epochs" not in " ".join(training.base_overrides(opts))


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--jobs"):
        accuracy.run(argparse.Namespace(size="tiny", jobs=0, out=str(tmp_path)))
    with pytest.raises(ValueError, match="--size"):
        accuracy.run(argparse.Namespace(size="huge", out=str(tmp_path)))
    with pytest.raises(ValueError, match="targets: 'nope.weight'"):
        baselines.lightning_pruning(_Toy(), 0.5, 2, targets=["nope.weight"])
    with pytest.raises(ValueError, match="method must be"):
        baselines.pack_row({"key": "x", "method": "magic"}, {}, "c", tmp_path / "x.psq", [])


@pytest.mark.parametrize("argv, name", [(["--seeds", "0"], "--seeds"), (["--groups", "core,nope"], "--groups")])
def test_the_command_names_a_bad_option_in_one_line(argv, name, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main([*argv, "--size", "tiny", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err and not list(tmp_path.iterdir())  # nothing written


def test_reuse_keeps_a_training_only_for_the_same_composed_recipe(tiny, tmp_path, capsys):
    import shutil

    _, out = tiny
    spec = json.loads((out / "accuracy_runs" / "ours50.spec.json").read_text())
    run_dir = tmp_path / "ours50"
    shutil.copytree(spec["dir"], run_dir)
    spec.update(dir=str(run_dir), reuse=True)
    before = (run_dir / "model.ckpt").stat().st_mtime_ns
    training.work(spec)
    assert "reusing" in capsys.readouterr().out
    assert (run_dir / "model.ckpt").stat().st_mtime_ns == before
    # The checkpoint was made from other recipe content under the same name (an edited
    # yaml): it must be retrained, not reused.
    meta = json.loads((run_dir / "train.json").read_text())
    meta["settings"]["config"]["compression"]["quantization_regularizer"]["weight"] = 0.5
    (run_dir / "train.json").write_text(json.dumps(meta))
    training.work(spec)
    assert "reusing" not in capsys.readouterr().out
    assert (run_dir / "model.ckpt").stat().st_mtime_ns != before


def test_tiny_structure_section_reuses_ours50_and_trains_block_masks(tiny):
    """The structure section shares the accuracy section's unstructured training (--reuse)
    and adds the block-structured one, whose decoded zeros are whole 1 x 8 blocks."""
    from compress.bench import structure

    results, out = tiny
    data = next(p for p in out.parent.iterdir() if p.name.startswith("corpus"))  # the fixture's corpus
    args = argparse.Namespace(size="tiny", jobs=1, threads=1, out=str(out), data_dir=str(data), reuse=True)
    got = structure.run(args)
    rows = {r["key"]: r for r in got["rows"]}
    assert list(rows) == [structure.UNSTRUCTURED, structure.BLOCK_RECIPE]
    assert rows[structure.UNSTRUCTURED] == _rows(results)["sparse50_qreg8"]  # the same training, reused
    decoded = load(out / "accuracy_runs" / "ours50_block" / f"{structure.BLOCK_RECIPE}.psq")
    checked = 0
    for name, w in decoded.items():
        if name.endswith("weight") and w.dim() >= 2 and (w == 0).any():
            z = w.reshape(w.shape[0], -1) == 0  # (rows, cols)
            cols = z.shape[1] - z.shape[1] % 8
            blocks = z[:, :cols].reshape(z.shape[0], -1, 8)  # (rows, cols / 8, 8)
            in_whole = int(blocks.all(-1).sum()) * 8
            # rounding to the grid adds a few zeros inside kept blocks; unstructured 50% masks
            # would leave well under 1% of their zeros in whole blocks of 8
            assert in_whole >= 0.9 * int(blocks.sum()), name
            checked += 1
    assert checked >= 3
    t = got["target"]
    by = {k: 100 * r["metrics"]["test_voices"]["wer"] for k, r in rows.items()}
    assert t["value"] == pytest.approx(by[structure.BLOCK_RECIPE] - by[structure.UNSTRUCTURED])
    md = (out / "structure.md").read_text()
    assert md.count("**PASS**") + md.count("**MISS**") == 1 and got["command"] in md


def test_no_train_tables_what_is_done_and_trains_nothing(tiny, tmp_path):
    import shutil

    results, out = tiny
    copy = tmp_path / "bench"
    shutil.copytree(out, copy)
    (copy / "accuracy_runs" / "ours75_5" / "model.ckpt").unlink()  # as if that training had not run yet
    data = results["command"].split("--data-dir ")[1].split()[0]
    args = argparse.Namespace(size="tiny", jobs=2, threads=1, out=str(copy), data_dir=data, seeds=2, no_train=True)
    again = accuracy.run(args)
    assert again["not_run"] == ["ours75_5"]
    assert not (copy / "accuracy_runs" / "ours75_5" / "model.ckpt").exists()  # nothing was trained
    assert [e["key"] for e in again["entries"]] == [k for k in KEYS if k != "sparse75_qreg5"]
    by = {e["key"]: e for e in again["entries"]}
    assert by["sparse75_qreg4"] == next(e for e in results["entries"] if e["key"] == "sparse75_qreg4")
    assert "not run (`--no-train`" in (copy / "accuracy.md").read_text() and "--no-train" in again["command"]
