"""Bench section "accuracy": WER/CER against packed file size on the built-in corpus, from scratch.

Every method trains the same model on the same data for the same epochs and seed
(``recipes/``, composed with Hydra's compose API). Groups of trainings (``--groups``, so
the study can run in batches with ``--reuse``):

* ``core``: fp32 (``compression=none``), Lightning's ``ModelPruning`` at 50% and 75%
  (``compression=none`` plus the callback, on the sparsifier's schedule), and ours,
  ``sparse50_qreg8`` and ``sparse75_qreg4``;
* ``peers``: forward fake-quant QAT (STE) with the same ``GradualSparsifier``, at 50% +
  8 bits and 75% + 4 bits (``sparse50_fq8``, ``sparse75_fq4``);
* ``ablation``: the sparsifier alone (50% and 75%, then PTQ) and the regularizer alone
  (``qreg8``, no sparsity);
* ``bits``: ours at 75% with 6 and 5 bits, next to PTQ and one-shot pruning at those bits;
* ``defaults``: ``QuantizationRegularizer(bits=b)`` with no other argument, alone, at
  b = 6, 4, 2, next to PTQ at b bits (the regularizer's defaults must not lose to rounding).

The fp32 training is part of every run. Every row of the table is a packed file
(``compress.export.pack``) evaluated after decoding it with ``compress.load``:

* fp32 (fp32 passthrough); PTQ at each setting's bits; one-shot pruning + PTQ (from the
  fp32 weights);
* ModelPruning + PTQ, the sparsifier alone + PTQ; ours and fake-quant QAT (bits, scales and
  masks from the callbacks' state).

Trainings run as separate processes (``--jobs`` at a time, ``--threads`` each); each writes
its checkpoint, packed files and figures under ``<out>/accuracy_runs/<training>/``; the
table is built from those files afterwards. ``--reuse`` skips a training whose checkpoint
is already there. Results: ``<out>/accuracy.md``, ``<out>/accuracy.json`` and the picture
``<out>/accuracy.png``.

    python -m compress.bench.accuracy --size tiny             # the CI smoke run
    python -m compress.bench.accuracy --size full --jobs 2    # the figures (hours)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compress.bench import seeds
from compress.bench.baselines import METHODS, read_setting
from compress.bench.baselines import plan as baselines_plan
from compress.bench.jobs import run_jobs
from compress.bench.plot import plot
from compress.bench.training import (
    add_training_arguments,
    base_overrides,
    check_groups,
    command_line,
    compose_config,
    machine,
    output_dir,
    read_options,
    section_main,
    seed_overrides,
    write_report,
)
from compress.checks import check_int

SETTINGS = (("easy", "sparse50_qreg8"), ("hard", "sparse75_qreg4"))  # (setting, recipe of ours)
SPLIT = seeds.SPLIT  # the split the targets are computed on (voices never heard in training)
GROUPS = ("core", "peers", "ablation", "bits", "defaults")
# The trainings beyond baselines.plan's five, by group:
# (training, compression recipe, setting, row key, row method, bits, sparsity).
MORE = {
    "peers": [("fq75", "sparse75_fq4", "hard", "sparse75_fq4", "fakequant", 4, 0.75),
              ("fq50", "sparse50_fq8", "easy", "sparse50_fq8", "fakequant", 8, 0.5)],
    "ablation": [("sparse75", "sparse75", "hard", "sparse75_ptq4", "sparse", 4, 0.75),
                 ("sparse50", "sparse50", "easy", "sparse50_ptq8", "sparse", 8, 0.5),
                 ("qreg8", "qreg8", "ablation", "qreg8", "ours", 8, 0.0)],
    "bits": [("ours75_6", "sparse75_qreg6", "bits", "sparse75_qreg6", "ours", 6, 0.75),
             ("ours75_5", "sparse75_qreg5", "bits", "sparse75_qreg5", "ours", 5, 0.75)],
}
# The regularizer with its defaults, alone, at other bit widths (qreg8, the ablation's, is 8):
# QuantizationRegularizer(bits=b) and nothing else must not end worse than PTQ at b bits.
DEFAULT_BITS = (6, 4, 2)
ORDER = (None, "easy", "ablation", "hard", "bits", "defaults")  # table order of the settings


# Run last, after the other seeds: the first to leave out when the machine's time is short.
LAST = ("ours75_5", "qreg6")
# The seed study at 75% + 4 bits: fp32, the best baseline, fake-quant QAT and ours. The best
# baseline was chosen on valid at seed 0: the sparsifier alone + PTQ int4 (8.69% WER), against
# 9.47% for ModelPruning + PTQ int4 and 49.06% for one-shot pruning + PTQ int4.
SEED_TRAININGS = ("fp32", "sparse75", "fq75", "ours75")

OPTIONS = ("size", "epochs", "jobs", "data_dir", "reuse", "groups", "seeds", "no_train")  # the section's own options


def add_arguments(parser, prefix: str = "accuracy-") -> None:
    """The section's options, named ``--accuracy-size`` etc. under ``python -m compress.bench``.

    The prefix keeps them apart from other sections' options (``overhead`` has its own
    ``--epochs``); ``--threads`` (per training) and ``--out`` are the dispatcher's.
    ``python -m compress.bench.accuracy`` uses ``prefix=""``.
    """
    add_training_arguments(parser, prefix, epochs_help="epochs of every training (default: the recipe's)",
                           reuse_help="keep a training whose checkpoint was made with the same settings and "
                                      "composed recipe (model, compression, trainer, seed)")
    parser.add_argument(f"--{prefix}groups", default=",".join(GROUPS),
                        help=f"comma-separated groups of trainings to run, of {GROUPS} (default all; "
                             "the fp32 training is always part of the run)")
    parser.add_argument(f"--{prefix}seeds", type=int, default=1,
                        help=f"seeds of the 75%% + 4-bit trainings of the groups run ({', '.join(SEED_TRAININGS)}; "
                             "default 1: seed 0 only)")
    parser.add_argument(f"--{prefix}no-train", action="store_true",
                        help="train nothing: the table of the trainings already done (with the same settings) "
                             "in --out, the others listed as not run")


def _options(args) -> argparse.Namespace:
    """The options from ``args`` (either naming style), defaults for what is missing."""
    opts = read_options(args, "accuracy", OPTIONS, groups=",".join(GROUPS), seeds=1, no_train=False)
    if opts.epochs is not None:
        check_int("--epochs", opts.epochs, min=1)
    check_int("--seeds", opts.seeds, min=1)
    opts.groups = check_groups(opts.groups, GROUPS)
    return opts


def plan(settings: dict, groups, seeds: int = 1) -> list[dict]:
    """The trainings of ``groups`` (fp32 always first) and the rows each yields.

    Args:
        settings: setting name -> ``read_setting`` of our recipe for it ("easy", "hard").
        groups: some of ``GROUPS``.
        seeds: the ``SEED_TRAININGS`` of the groups run are repeated for seeds 1..seeds-1
            (``seed=s``, on seed 0's corpus); their rows carry ``seed``.

    Returns:
        ``baselines.plan``'s jobs (only fp32 without "core"), then those of ``MORE`` and
        ``DEFAULT_BITS``, then the other seeds, then ``LAST``. Order is priority.
    """
    jobs = baselines_plan(settings)
    if "core" not in groups:
        jobs = jobs[:1]
    if "bits" in groups:  # PTQ and one-shot pruning at the other bit widths, from the fp32 weights
        for bits in (6, 5):
            grid = {"bits": bits, "clip": None, "granularity": "channel"}  # clip None: grid.default_clip
            jobs[0]["rows"] += [{"key": f"ptq{bits}", "method": "ptq", "setting": "bits", **grid},
                                {"key": f"oneshot75_ptq{bits}", "method": "oneshot", "setting": "bits",
                                 "target_sparsity": 0.75, **grid}]
    for group, trainings in MORE.items():
        if group not in groups:
            continue
        for name, recipe, setting, key, method, bits, sparsity in trainings:
            row = {"key": key, "method": method, "setting": setting, "target_sparsity": sparsity, "bits": bits}
            if method == "sparse":  # rounded after training: the grid of the setting's recipe
                row.update({k: settings[setting][k] for k in ("clip", "granularity")})
            jobs.append({"name": name, "compression": recipe, "pruning": None, "rows": [row]})
    if "defaults" in groups:
        for bits in DEFAULT_BITS:
            if not any(r["key"] == f"ptq{bits}" for r in jobs[0]["rows"]):
                jobs[0]["rows"].append({"key": f"ptq{bits}", "method": "ptq", "setting": "defaults", "bits": bits,
                                        "clip": None, "granularity": "channel"})
            jobs.append({"name": f"qreg{bits}", "compression": "qreg8", "pruning": None,
                         "extra": [f"compression.quantization_regularizer.bits={bits}"],
                         "rows": [{"key": f"qreg{bits}", "method": "ours", "setting": "defaults",
                                   "target_sparsity": 0.0, "bits": bits}]})
    if "ablation" in groups:  # the 75% pruned models not rounded: the part of the loss pruning alone causes
        for name, method in (("lightning75", "lightning"), ("sparse75", "sparse")):
            job = next((j for j in jobs if j["name"] == name), None)
            if job is not None:
                job["rows"].append({"key": f"{name}_fp32", "method": method, "setting": "ablation",
                                    "target_sparsity": 0.75, "bits": None})
    for seed in range(1, seeds):
        for job in [j for j in jobs if j["name"] in SEED_TRAININGS]:
            rows = [{**r, "seed": seed} for r in job["rows"] if r["setting"] in (None, "hard")]
            jobs.append({**job, "name": f"{job['name']}_s{seed}", "rows": rows,
                         "extra": job.get("extra", []) + seed_overrides(seed)})
    return [j for j in jobs if j["name"] not in LAST] + [j for j in jobs if j["name"] in LAST]


# -- the table and the targets ------------------------------------------------------------
def row_order(row: dict) -> tuple:
    """Sort key: fp32 first, then the settings in ``ORDER``, wider grids first, methods in ``METHODS`` order."""
    return (ORDER.index(row["setting"]), -(row.get("bits") or 0), METHODS.index(row["method"]), row.get("seed", 0))


def check_targets(rows: list[dict], split: str = SPLIT) -> list[dict]:
    """PASS/MISS of each target from the rows (``compress.bench.seeds.check_targets`` on
    their means over seeds; a row without ``seed`` is seed 0)."""
    return seeds.check_targets(seeds.aggregate(rows), split)


def format_markdown(results: dict) -> str:
    """``accuracy.md``: the table, the targets, the run's command, time and machine."""
    rows, entries, m = results["rows"], results["entries"], results["machine"]
    fp32_bytes = next(e["bytes"] for e in entries if e["key"] == "fp32")
    seconds = {}
    for r in rows:
        seconds.setdefault(r["key"], []).append(r["train_seconds"])
    lines = [
        "# Accuracy and size on the built-in corpus (from scratch)", "",
        f"Every method trains the same model on the same data for {results['epochs']} epochs from the same "
        "initialization seed. Every row is a packed file (`compress.export.pack`) evaluated after decoding it "
        "with `compress.load`. WER in %, mean ± sample standard deviation over the seeds listed (one seed: no ±); "
        "a row beats another only when its mean is lower by more than the larger of the two deviations. "
        "Variants are chosen on `valid`; the test splits are reported only.", "",
        "| method | WER test_voices | WER test_sentences | WER valid | seeds | packed bytes | ratio to fp32 | "
        "sparsity | training s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        secs = seconds[e["key"]]
        lines.append(f"| {e['label']} | {seeds.cell(e['wer_test_voices'])} | {seeds.cell(e['wer_test_sentences'])} | "
                     f"{seeds.cell(e['wer_valid'])} | {','.join(map(str, e['seeds']))} | {e['bytes']:,} | "
                     f"{fp32_bytes / e['bytes']:.2f}x | {100 * e['sparsity']:.1f}% | {sum(secs) / len(secs):.0f} |")
    lines += ["", f"## Targets (WER on {results['split']}, means over seeds)", ""]
    for t in results["targets"]:
        what = {"loss": f"{t['value']:+.2f} points (limit {t['limit']:.2f})",
                "defaults": f"{t['value']:+.2f} points (must be <= 0)",
                "beat": f"{t['value']:+.2f} points (must be below {t['limit']:.2f}: the larger standard deviation)"}[t["kind"]]
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {what}")
    lines += [
        "", "## Run", "",
        f"- command: `{results['command']}` ({results['size']} size)",
        f"- wall time: {results['wall_seconds']:.0f} s ({results['wall_seconds'] / 3600:.2f} h)",
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs, {m['jobs']} training(s) at a time x "
        f"{m['threads_per_training']} torch thread(s), torch {m['torch']}, Python {m['python']}, {m['platform']}",
        f"- plot: `{results['plot']}`" if results.get("plot") else "- plot: not written (matplotlib missing)",
        *([f"- not run (`--no-train`, no checkpoint yet): {', '.join(results['not_run'])}"]
          if results.get("not_run") else []),
        "", "## Notes", "",
        "- sparsity: zeros among the compressed tensors of the decoded file (rounding to the grid can add a few).",
        "- PTQ rows: per-channel scales from `grid.compute_scale` once after training, MSE-optimal clipping at "
        "<= 4 bits (as the regularizer), then `snap`. One-shot rows prune each tensor once to an exact count by "
        "magnitude before PTQ. PTQ and one-shot rows come from the fp32 training and show its training time.",
        "- Lightning `ModelPruning` (`l1_unstructured`, per tensor, same targets, lottery-ticket reset off) prunes "
        "at the end of epoch e to the sparsity the sparsifier installs at the start of epoch e+1, so both follow "
        "the same cubic schedule at the same moments.",
        "- fake-quant QAT (STE): `compress.callbacks.fake_quant.FakeQuantQAT`, per-channel fake quantization of "
        "the forward weights on the same grid and clipping rule, with the same `GradualSparsifier`. "
        "\"GradualSparsifier alone\": our sparsifier without the regularizer, rounded after training; "
        "\"ours: qreg8\": the regularizer without sparsity (the ablation of where a gain over fp32 comes from).",
        f"- training times are wall times with {m['jobs']} training(s) sharing the machine; compare them loosely.",
    ]
    return "\n".join(lines) + "\n"


# -- the parent: plan, launch (compress.bench.jobs), collect -------------------------------------
def _command(opts) -> str:
    return command_line("compress.bench.accuracy", opts, "--groups", ",".join(opts.groups), "--seeds", str(opts.seeds),
                        *(["--no-train"] if opts.no_train else []),
                        *(["--epochs", str(opts.epochs)] if opts.epochs is not None else []))


def run(args=None) -> dict:
    """Run the section (all trainings, then the table); returns the results dict."""
    from compress.pipeline import build_datamodule

    opts = _options(args)
    t0 = time.perf_counter()
    out = output_dir(opts, "accuracy")
    runs = out / "accuracy_runs"
    runs.mkdir(parents=True, exist_ok=True)
    base = base_overrides(opts)
    settings = {k: read_setting(compose_config(base + [f"compression={r}"]), r) for k, r in SETTINGS}
    cfg = compose_config(base + ["compression=none"])
    print(f"== accuracy: {opts.size} run, {int(cfg.trainer.max_epochs)} epochs, {opts.jobs} job(s) x "
          f"{opts.threads} thread(s), output {out}", flush=True)
    # Generate the corpus once here, so parallel trainings never race to write it.
    build_datamodule(cfg, gen_workers=opts.jobs * opts.threads).prepare_data()
    specs = [{**job, "overrides": base + job.get("extra", []), "dir": str(runs / job["name"]), "reuse": bool(opts.reuse)}
             for job in plan(settings, opts.groups, opts.seeds)]
    missing = []
    if opts.no_train:  # only what a checkpoint is there for; the worker still checks its settings
        missing = [s["name"] for s in specs if not (Path(s["dir"]) / "model.ckpt").is_file()]
        specs = [{**s, "reuse": True, "no_train": True} for s in specs if s["name"] not in missing]
        if not any(s["name"] == "fp32" for s in specs):
            raise ValueError(f"--no-train: no fp32 checkpoint in {runs / 'fp32'}; the table needs it")
    run_jobs(specs, opts.jobs, opts.threads, runs)
    done = {s["name"]: json.loads((Path(s["dir"]) / "rows.json").read_text()) for s in specs}
    rows = [r for s in specs for r in done[s["name"]]["rows"]]
    rows = sorted(rows, key=row_order)
    entries = seeds.aggregate(rows)
    results = {
        "command": _command(opts),
        "size": opts.size,
        "epochs": int(cfg.trainer.max_epochs),
        "split": SPLIT,
        "settings": settings,
        "rows": rows,
        "entries": entries,
        "not_run": missing,
        "trainings": {n: d["train"] for n, d in done.items()},
        "targets": seeds.check_targets(entries, SPLIT),
        "wall_seconds": time.perf_counter() - t0,
        "machine": machine(opts),
    }
    if plot(entries, out / "accuracy.png", f"From scratch ({results['epochs']} epochs): WER against size "
            "(mean ± std over seeds)"):
        results["plot"] = "accuracy.png"
    write_report(out, "accuracy", results, format_markdown(results))
    return results


def main(argv=None) -> None:
    """``python -m compress.bench.accuracy``."""
    section_main("compress.bench.accuracy", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
