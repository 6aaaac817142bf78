"""The fine-tuning protocol of the accuracy benchmark: the tiny run end to end, the seed
statistics and the target logic.

The tiny run checks the machinery (every fine-tuning starts from its seed's fp32
checkpoint, every row packed, decoded and tested on the test splits and on valid, the
table, the plot and the JSON written), not the figures.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from compress.bench import finetune, seeds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    data = tmp_path_factory.mktemp("corpus")
    args = argparse.Namespace(size="tiny", jobs=2, threads=1, out=str(out), data_dir=str(data), seeds=2)
    results = finetune.run(args)
    results["_data"] = str(data)
    return results, out


def test_tiny_run_writes_every_row_table_and_plot(tiny):
    results, out = tiny
    keys = {e["key"] for e in results["entries"]}
    expected = {"fp32", "ptq4", "oneshot75_ptq4", "lightning75_ptq4", "sparse75_ptq4", "sparse75_fq4",
                "sparse75_qreg4", "sparse75_qreg5", "sparse75_qreg6", "ptq5", "ptq6", "fp32_ft", "qreg8",
                "sparse50_qreg8", "sparse50_qreg8_relax", "sparse50_fq8", "lightning50_ptq8", "sparse50_ptq8", "ptq8", "oneshot50_ptq8"}
    assert expected | {f"v_{v}" for v in finetune.VARIANTS} <= keys
    by = {e["key"]: e for e in results["entries"]}
    for key in ("fp32", "sparse75_qreg4", "sparse75_fq4", "lightning75_ptq4"):
        assert by[key]["seeds"] == [0, 1] and by[key]["wer_test_voices"]["n"] == 2
    assert by["sparse75_qreg5"]["seeds"] == [0]
    for r in results["rows"]:
        assert set(r["metrics"]) == {"test_voices", "test_sentences"} and set(r["valid"]) == {"wer", "cer"}
        assert math.isfinite(r["metrics"]["test_voices"]["wer"])
    md = (out / "accuracy_finetune.md").read_text()
    assert "± " in md and results["command"] in md
    assert json.loads((out / "accuracy_finetune.json").read_text())["entries"] == results["entries"]
    png = out / "accuracy_finetune.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("sparse75_qreg4", "sparse75_fq4", "lightning75_ptq4", "sparse75_ptq4"):
        assert by[key]["sparsity"] >= 0.74, key


def test_fine_tunings_start_from_their_seeds_checkpoint_and_reuse_works(tiny):
    results, out = tiny
    runs = out / "accuracy_runs"
    for seed, base in ((0, "fp32"), (1, "fp32_s1")):
        name = "ft_sparse75_qreg4" + (f"_s{seed}" if seed else "")
        spec = json.loads((runs / f"{name}.spec.json").read_text())
        assert spec["init_from"] == str(runs / base / "model.ckpt")
        meta = json.loads((runs / name / "train.json").read_text())
        assert meta["settings"]["init_from"] == spec["init_from"]
    # the two fp32 seeds differ (a different training seed on the same corpus)
    a = torch.load(runs / "fp32" / "model.ckpt", weights_only=False)["state_dict"]
    b = torch.load(runs / "fp32_s1" / "model.ckpt", weights_only=False)["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # a rerun with --reuse trains nothing and evaluates nothing again
    again = finetune.run(argparse.Namespace(size="tiny", jobs=2, threads=1, out=str(out),
                                            data_dir=results["_data"], seeds=2, reuse=True,
                                            groups="hard"))
    logs = (runs / "ft_sparse75_qreg4.log").read_text()
    assert "reusing" in logs and "packing and testing" not in logs
    assert {e["key"] for e in again["entries"]} >= {"sparse75_qreg4", "fp32"}


def _entry(key, mean, std, n=3, method="ours", per_seed=None):
    per_seed = per_seed or {str(s): {"test_voices": mean} for s in range(n)}
    return {"key": key, "label": key, "method": method, "group": "hard", "per_seed": per_seed,
            "wer_test_voices": {"mean": mean, "std": std, "n": n}}


def test_beats_needs_a_margin_larger_than_the_spread():
    assert seeds.beats(_entry("a", 9.0, 0.3), _entry("b", 10.0, 0.5))
    assert not seeds.beats(_entry("a", 9.6, 0.3), _entry("b", 10.0, 0.5))  # 0.4 < 0.5
    assert not seeds.beats(_entry("a", 10.0, 0.0), _entry("b", 10.0, 0.0))  # a tie is no win


def test_targets_on_hand_made_numbers():
    fp32 = {"0": {"test_voices": 7.0}, "1": {"test_voices": 8.5}, "2": {"test_voices": 8.5}}
    entries = [_entry("fp32", 8.0, 0.2, method="fp32", per_seed=fp32), _entry("sparse75_qreg4", 8.9, 0.3),
               _entry("lightning75_ptq4", 10.0, 0.4, method="lightning"), _entry("sparse75_fq4", 9.1, 0.3),
               _entry("sparse75_qreg6", 7.6, 0.0, 1)]
    t = {x["target"]: x for x in seeds.check_targets(entries)}
    assert t["sparse75_qreg4 within 1 WER points of fp32 (same seeds)"]["pass"]
    # one seed: compared with fp32 of seed 0 (7.0), not with the mean over seeds (8.0)
    qreg6 = t["sparse75_qreg6 within 0.5 WER points of fp32 (same seeds)"]
    assert not qreg6["pass"] and abs(qreg6["value"] - 0.6) < 1e-9
    assert t["sparse75_qreg4 beats lightning75_ptq4"]["pass"]
    assert not t["sparse75_qreg4 beats sparse75_fq4"]["pass"]


def test_stats_are_sample_statistics():
    s = seeds._stats([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "n": 3}
    assert seeds._stats([4.0]) == {"mean": 4.0, "std": 0.0, "n": 1}


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="--groups must be a comma-separated list of"):
        finetune._options(argparse.Namespace(groups="hard,magic"))
    with pytest.raises(ValueError, match="--seeds must be an integer >= 1, got 0"):
        finetune._options(argparse.Namespace(seeds=0))
