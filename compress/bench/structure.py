"""Bench section "structure": what block-structured sparsity costs in WER.

Two trainings with the accuracy section's model, data, epochs and seed: our 50% + int8
recipe with unstructured masks (``sparse50_qreg8``, the accuracy section's own training,
shared with it under ``--reuse``) and the same with zeros in whole 1 x b blocks of
consecutive inputs (``BLOCK_RECIPE``), the structure the block-sparse kernels skip
(``compress.native.kernels``). Each row is its packed file, evaluated after decoding.
Variants are chosen on ``valid``; the test splits are reported.

    python -m compress.bench.structure --size tiny             # the CI smoke run
    python -m compress.bench.structure --size full --jobs 2    # the figure
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from compress.bench.accuracy import SPLIT
from compress.bench.jobs import run_jobs
from compress.bench.training import (
    add_training_arguments,
    base_overrides,
    command_line,
    compose_config,
    machine,
    output_dir,
    read_options,
    section_main,
    write_report,
)

UNSTRUCTURED = "sparse50_qreg8"
BLOCK_RECIPE = "sparse50_block8_qreg8"
LIMIT = 1.0  # WER points the block structure may cost against unstructured masks
OPTIONS = ("size", "epochs", "jobs", "data_dir", "reuse")


def add_arguments(parser, prefix: str = "structure-") -> None:
    """The section's options (``--structure-size`` etc. under ``python -m compress.bench``)."""
    add_training_arguments(parser, prefix, epochs_help="epochs of both trainings (default: the recipe's)",
                           reuse_help="keep a training whose checkpoint was made with the same settings "
                                      "(the unstructured one is the accuracy section's)")


def plan() -> list[dict]:
    """The two trainings, each with one row of ours (``compress.bench.baselines.pack_row``)."""
    jobs = []
    for name, recipe in (("ours50", UNSTRUCTURED), ("ours50_block", BLOCK_RECIPE)):
        jobs.append({"name": name, "compression": recipe, "pruning": None,
                     "rows": [{"key": recipe, "method": "ours", "setting": "easy", "target_sparsity": 0.5,
                               "bits": 8}]})
    return jobs


def check_target(rows: list[dict], split: str = SPLIT) -> dict:
    """PASS/MISS of "block-structured within ``LIMIT`` WER points of unstructured" on ``split``."""
    by = {r["key"]: 100.0 * float(r["metrics"][split]["wer"]) for r in rows}
    cost = by[BLOCK_RECIPE] - by[UNSTRUCTURED]
    return {"target": f"{BLOCK_RECIPE} within {LIMIT:g} WER points of {UNSTRUCTURED} ({split})",
            "value": cost, "limit": LIMIT, "pass": cost <= LIMIT + 1e-9}


def format_markdown(results: dict) -> str:
    """``structure.md``: the two rows, the target and the run."""
    rows, m, t = results["rows"], results["machine"], results["target"]
    splits = list(rows[0]["metrics"])
    lines = [
        "# Block-structured against unstructured sparsity", "",
        f"The accuracy section's model, data, {results['epochs']} epochs and seed; one seed. Every row is a "
        "packed file evaluated after decoding it. WER in %.", "",
        "| recipe | masks | " + " | ".join(f"WER {s}" for s in splits) + " | WER valid | packed bytes | sparsity |",
        "|---" * (5 + len(splits)) + "|",
    ]
    for r in rows:
        masks = "1 x 8 blocks" if r["key"] == BLOCK_RECIPE else "unstructured"
        scores = " | ".join(f"{100 * r['metrics'][s]['wer']:.2f}" for s in splits)
        lines.append(f"| {r['key']} | {masks} | {scores} | {100 * r['valid']['wer']:.2f} | {r['bytes']:,} | "
                     f"{100 * r['decoded_sparsity']:.1f}% |")
    lines += ["", f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {t['value']:+.2f} points "
                  f"(limit {t['limit']:.2f})", "",
              "## Run", "", f"- command: `{results['command']}` ({results['size']} size)",
              f"- wall time: {results['wall_seconds']:.0f} s",
              f"- machine: {m['processor']}, {m['cpu_count']} CPUs, {m['jobs']} training(s) at a time x "
              f"{m['threads_per_training']} torch thread(s), torch {m['torch']}"]
    return "\n".join(lines) + "\n"


def run(args=None) -> dict:
    """Both trainings (``--reuse`` keeps finished ones), then the table."""
    from compress.pipeline import build_datamodule

    opts = read_options(args, "structure", OPTIONS)
    t0 = time.perf_counter()
    out = output_dir(opts, "structure")
    runs = out / "accuracy_runs"  # shared with the accuracy section: its ours50 is the same training
    runs.mkdir(parents=True, exist_ok=True)
    base = base_overrides(opts)
    cfg = compose_config(base + ["compression=none"])
    print(f"== structure: {opts.size} run, {int(cfg.trainer.max_epochs)} epochs, output {out}", flush=True)
    build_datamodule(cfg, gen_workers=opts.jobs * opts.threads).prepare_data()
    specs = [{**job, "overrides": base, "dir": str(runs / job["name"]), "reuse": bool(opts.reuse)} for job in plan()]
    run_jobs(specs, opts.jobs, opts.threads, runs)  # the accuracy worker trains and packs each job
    rows = [r for s in specs for r in json.loads((Path(s["dir"]) / "rows.json").read_text())["rows"]]
    results = {"command": command_line("compress.bench.structure", opts), "size": opts.size,
               "epochs": int(cfg.trainer.max_epochs), "split": SPLIT, "rows": rows, "target": check_target(rows),
               "wall_seconds": time.perf_counter() - t0, "machine": machine(opts)}
    write_report(out, "structure", results, format_markdown(results))
    return results


def main(argv=None) -> None:
    """``python -m compress.bench.structure``."""
    section_main("compress.bench.structure", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
