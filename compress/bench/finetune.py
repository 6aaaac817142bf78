"""Bench section "finetune": every method compresses the same trained fp32 model.

The protocol teams use: one fp32 training per seed (``compression=none``, the recipe's
epochs), then every method fine-tunes that same checkpoint for the same few epochs with
the same optimizer and schedule (``init_from``, ``FT_OVERRIDES``). PTQ and one-shot rows
need no fine-tuning and come from the fp32 checkpoint itself. Every row is a packed
file evaluated after decoding it with ``compress.load``; variants are chosen on the
``valid`` split, the test splits are only reported.

Groups of trainings (``--finetune-groups``, so the study can run in batches with
``--finetune-reuse``):

* ``hard``: 75% + 4 bits, every seed: Lightning ``ModelPruning`` + PTQ, the
  ``GradualSparsifier`` alone + PTQ, fake-quant QAT (STE) with the same sparsifier, and
  ours (``sparse75_qreg4``); with PTQ int4 and one-shot + PTQ from the fp32 checkpoint.
* ``bits``: ours at 75% with 5 and 6 bits (first seed), next to PTQ at those bits.
* ``ablation``: 50% + 8 bits (first seed): fp32 fine-tuned the same epochs without
  compression, the sparsifier alone, the regularizer alone, both.
* ``easy``: 50% + 8 bits (first seed): Lightning ``ModelPruning``, fake-quant QAT, and
  the relax form at 8 bits.
* ``variants``: other settings of ours at 75% + 4 bits (first seed), for the choice on
  ``valid``.

    python -m compress.bench finetune --finetune-size tiny    # the CI smoke run
    python -m compress.bench.finetune --jobs 2 --reuse        # the figures (hours)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compress.bench import accuracy, training
from compress.bench.jobs import run_jobs
from compress.bench.plot import plot
from compress.bench.seeds import aggregate, cell, check_targets
from compress.bench.training import seed_overrides
from compress.checks import check_int

FT_EPOCHS = 3
FT_OVERRIDES = ("++model.lr=0.001", "++model.schedule=cosine")  # a fine-tuning schedule, the same for every method
SEEDS = 3
GROUPS = ("variants", "hard", "bits", "ablation", "easy")
# Variants of ours at 75% + 4 bits, chosen on valid (name -> recipe, extra overrides).
QREG = "compression.quantization_regularizer"
VARIANTS = {
    "relax_start0": ("sparse75_qreg4", [f"{QREG}.mode=relax", f"{QREG}.start_epoch=0.0"]),
    "prox_start0.5": ("sparse75_qreg4", [f"{QREG}.mode=prox", f"{QREG}.start_epoch=0.5"]),
    "hard_every50": ("sparse75_qreg4", [f"{QREG}.mode=hard", f"{QREG}.start_epoch=0.5", f"++{QREG}.hard_every=50"]),
    "grad_late": ("sparse75_qreg4_grad", []),
}
OPTIONS = ("size", "epochs", "jobs", "data_dir", "reuse", "seeds", "groups")


def add_arguments(parser, prefix: str = "finetune-") -> None:
    """The section's options (``--finetune-*`` under ``python -m compress.bench``)."""
    training.add_training_arguments(
        parser, prefix, epochs_help=f"fine-tuning epochs of every method (default {FT_EPOCHS}; 1 for tiny)",
        reuse_help="keep trainings and figures made with the same settings (run the study in batches)")
    parser.add_argument(f"--{prefix}seeds", type=int, default=None,
                        help=f"seeds of the hard setting (default {SEEDS}; 2 for tiny)")
    parser.add_argument(f"--{prefix}groups", default=",".join(GROUPS),
                        help=f"comma-separated groups of trainings to run, of {GROUPS} (default all)")


def _options(args) -> argparse.Namespace:
    opts = training.read_options(args, "finetune", OPTIONS, seeds=None, groups=",".join(GROUPS))
    opts.epochs = opts.epochs if opts.epochs is not None else (1 if opts.size == "tiny" else FT_EPOCHS)
    opts.seeds = opts.seeds if opts.seeds is not None else (2 if opts.size == "tiny" else SEEDS)
    for name in ("epochs", "seeds"):
        check_int(f"--{name}", getattr(opts, name), min=1)
    opts.groups = training.check_groups(str(opts.groups), GROUPS)
    return opts


def _row(key, method, bits=None, sparsity=0.0, seed=0, group=None, **extra) -> dict:
    row = {"key": key, "method": method, "setting": group, "seed": seed, "target_sparsity": sparsity}
    if bits is not None:
        row["bits"] = bits
    if method in ("ptq", "oneshot", "lightning", "sparse"):
        row.update(clip=None, granularity="channel")  # grid.default_clip: the one rule
    return {**row, **extra}


def plan(base: list[str], seeds: int, epochs: int, groups: list[str], runs: Path) -> list[dict]:
    """Every training of the requested groups (fp32 bases first), with the rows each yields.

    Args:
        base: Hydra overrides shared by every training (size, threads, data dir).
        seeds: number of seeds of the hard setting (0, 1, ...).
        epochs: fine-tuning epochs.
        groups: some of ``GROUPS``.
        runs: the folder of the training directories.
    """
    ft = [f"trainer.max_epochs={epochs}", *FT_OVERRIDES]
    hard_seeds = list(range(seeds)) if "hard" in groups else [0]
    jobs = []
    for s in hard_seeds:
        rows = [_row("fp32", "fp32", seed=s, group="fp32"), _row("ptq4", "ptq", 4, seed=s, group="hard"),
                _row("oneshot75_ptq4", "oneshot", 4, 0.75, s, "hard")]
        name = "fp32" if s == 0 else f"fp32_s{s}"
        jobs.append({"name": name, "compression": "none", "pruning": None, "overrides": base + seed_overrides(s),
                     "rows": rows, "dir": str(runs / name)})
    # The other PTQ rows of seed 0, evaluated in a job of their own so that the
    # fine-tunings need not wait for them.
    more = [_row(f"ptq{b}", "ptq", b, 0.0, 0, "bits") for b in (5, 6)]
    more += [_row(f"oneshot75_ptq{b}", "oneshot", b, 0.75, 0, "bits") for b in (5, 6)]
    more += [_row("ptq8", "ptq", 8, 0.0, 0, "easy"), _row("oneshot50_ptq8", "oneshot", 8, 0.5, 0, "easy")]
    rows_job = {"name": "fp32_rows", "compression": "none", "pruning": None, "overrides": base, "rows": more,
                "rows_of": str(runs / "fp32"), "needs": "fp32", "dir": str(runs / "fp32_rows")}

    def finetune(key, compression, rows, seed=0, pruning=None, extra=()):
        name = f"ft_{key}" + (f"_s{seed}" if seed else "")
        base_name = "fp32" if seed == 0 else f"fp32_s{seed}"
        jobs.append({"name": name, "compression": compression, "pruning": pruning,
                     "overrides": base + seed_overrides(seed) + ft + list(extra), "rows": rows,
                     "init_from": str(runs / base_name / "model.ckpt"), "needs": base_name,
                     "dir": str(runs / name), "seed": seed})

    def pruning(sparsity):
        return {"final_sparsity": sparsity, "schedule": "cubic", "start_epoch": 0, "end_epoch": None}

    def hard(s):
        finetune("sparse75_qreg4", "sparse75_qreg4", [_row("sparse75_qreg4", "ours", 4, 0.75, s, "hard")], s)
        finetune("sparse75_fq4", "sparse75_fq4", [_row("sparse75_fq4", "fakequant", 4, 0.75, s, "hard")], s)
        # The best baseline from scratch (bench/accuracy.md) on every seed; the sparsifier
        # alone + PTQ (the ablation of the regularizer) on the first.
        finetune("lightning75_ptq4", "none", [_row("lightning75_ptq4", "lightning", 4, 0.75, s, "hard")], s,
                 pruning(0.75))
        if s == 0:
            finetune("sparse75_ptq4", "sparse75", [_row("sparse75_ptq4", "sparse", 4, 0.75, s, "hard")], s)

    def easy(part):
        if part == 0:  # the ablation: where a gain over fp32 comes from
            finetune("sparse50_qreg8", "sparse50_qreg8", [_row("sparse50_qreg8", "ours", 8, 0.5, 0, "easy")])
            finetune("sparse50_ptq8", "sparse50", [_row("sparse50_ptq8", "sparse", 8, 0.5, 0, "easy")])
            finetune("qreg8", "qreg8", [_row("qreg8", "ours", 8, 0.0, 0, "easy")])
            finetune("fp32_ft", "none", [_row("fp32_ft", "fp32", None, 0.0, 0, "easy")])
        else:
            finetune("sparse50_fq8", "sparse50_fq8", [_row("sparse50_fq8", "fakequant", 8, 0.5, 0, "easy")])
            # the other default form at 8 bits, for the choice of the default form per bit width
            finetune("sparse50_qreg8_relax", "sparse50_qreg8",
                     [_row("sparse50_qreg8_relax", "ours", 8, 0.5, 0, "easy")], extra=[f"++{QREG}.mode=relax"])
            finetune("lightning50_ptq8", "none", [_row("lightning50_ptq8", "lightning", 8, 0.5, 0, "easy")], 0,
                     pruning(0.5))

    # Order is priority: seed 0 of the hard setting and the variants first (the choice of
    # the default is made on them), then the other seeds, the ablation, the bit widths
    # and the rest.
    if "hard" in groups:
        hard(0)
    if "variants" in groups:
        for v, (recipe, extra) in VARIANTS.items():
            finetune(f"v_{v}", recipe, [_row(f"v_{v}", "ours", 4, 0.75, 0, "variants")], extra=extra)
    if "hard" in groups:  # a seed's fine-tunings start as soon as its base is ready, before what follows
        for s in hard_seeds[1:]:
            hard(s)
    if "ablation" in groups:
        easy(0)
    if {"bits", "ablation", "easy"} & set(groups):
        jobs.append(rows_job)
    if "bits" in groups:
        for b in (5, 6):
            finetune(f"sparse75_qreg{b}", f"sparse75_qreg{b}", [_row(f"sparse75_qreg{b}", "ours", b, 0.75, 0, "bits")])
    if "easy" in groups:
        easy(1)
    return jobs


def format_markdown(results: dict) -> str:
    entries, m = results["entries"], results["machine"]
    fp32_bytes = next((e["bytes"] for e in entries if e["key"] == "fp32"), None)
    lines = [
        "# Accuracy and size: compressing a trained model (fine-tuning protocol)", "",
        f"One fp32 training per seed ({results['base_epochs']} epochs), then every method fine-tunes that same "
        f"checkpoint for {results['epochs']} epochs (AdamW, lr 1e-3, cosine schedule). PTQ and one-shot rows "
        "come from the fp32 checkpoint. Every row is a packed file evaluated after decoding it with "
        "`compress.load`. WER in %, mean ± sample standard deviation over the seeds listed (one seed: no ±). "
        "Variants were chosen on `valid`; the test splits are reported only.", "",
        "| method | WER test_voices | WER test_sentences | WER valid | seeds | packed bytes | ratio to fp32 | sparsity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {g: i for i, g in enumerate(("fp32", "hard", "bits", "easy", "variants"))}
    for e in sorted(entries, key=lambda e: order.get(e["group"], 9)):
        ratio = f"{fp32_bytes / e['bytes']:.2f}x" if fp32_bytes else "-"
        lines.append(f"| {e['label']} | {cell(e['wer_test_voices'])} | {cell(e['wer_test_sentences'])} | "
                     f"{cell(e['wer_valid'])} | {','.join(map(str, e['seeds']))} | {e['bytes']:,} | {ratio} | "
                     f"{100 * e['sparsity']:.1f}% |")
    lines += ["", f"## Targets (WER on {results['split']}, means over seeds)", ""]
    for t in results["targets"]:
        what = (f"{t['value']:+.2f} points (limit {t['limit']:.2f})" if t["kind"] == "loss" else
                f"{t['value']:+.2f} points (must be below {t['limit']:.2f}: the larger standard deviation)")
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {what}")
    lines += [
        "", "## Run", "",
        f"- command: `{results['command']}` ({results['size']} size)",
        f"- wall time of this invocation: {results['wall_seconds']:.0f} s (trainings reused with --reuse are not "
        "counted)",
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs, {m['jobs']} training(s) at a time x "
        f"{m['threads_per_training']} torch thread(s), torch {m['torch']}, Python {m['python']}",
        f"- plot: `{results['plot']}`" if results.get("plot") else "- plot: not written (matplotlib missing)",
    ]
    return "\n".join(lines) + "\n"


def _command(opts) -> str:
    return training.command_line("compress.bench.finetune", opts, "--epochs", str(opts.epochs),
                                 "--seeds", str(opts.seeds), "--groups", ",".join(opts.groups))


def run(args=None) -> dict:
    """Run the section (the fp32 bases, then the fine-tunings, then the table)."""
    from compress.pipeline import build_datamodule

    opts = _options(args if args is not None else argparse.Namespace())
    t0 = time.perf_counter()
    out = training.output_dir(opts, "finetune")
    runs = out / "accuracy_runs"
    runs.mkdir(parents=True, exist_ok=True)
    acc = argparse.Namespace(size=opts.size, epochs=None, threads=opts.threads, data_dir=opts.data_dir)
    base = training.base_overrides(acc)
    cfg = training.compose_config(base + ["compression=none"])
    print(f"== finetune: {opts.size} run, {int(cfg.trainer.max_epochs)} + {opts.epochs} epochs, {opts.seeds} "
          f"seed(s), groups {opts.groups}, {opts.jobs} job(s) x {opts.threads} thread(s), output {out}", flush=True)
    build_datamodule(cfg, gen_workers=opts.jobs * opts.threads).prepare_data()
    specs = [{**job, "reuse": bool(opts.reuse)} for job in plan(base, opts.seeds, opts.epochs, opts.groups, runs)]
    run_jobs(specs, opts.jobs, opts.threads, runs)  # a fine-tuning waits for its base ("needs")
    rows = [r for s in specs for r in json.loads((Path(s["dir"]) / "rows.json").read_text())["rows"]]
    entries = aggregate(rows)
    results = {
        "command": _command(opts), "size": opts.size, "epochs": opts.epochs,
        "base_epochs": int(cfg.trainer.max_epochs), "split": accuracy.SPLIT, "rows": rows, "entries": entries,
        "targets": check_targets(entries), "wall_seconds": time.perf_counter() - t0,
        "machine": training.machine(opts),
    }
    if plot(entries, out / "accuracy_finetune.png", "Fine-tuning protocol: WER against size (mean ± std over seeds)"):
        results["plot"] = "accuracy_finetune.png"
    training.write_report(out, "accuracy_finetune", results, format_markdown(results))
    return results


def main(argv=None) -> None:
    """``python -m compress.bench.finetune``."""
    training.section_main("compress.bench.finetune", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
