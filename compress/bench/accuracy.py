"""Bench section "accuracy": WER/CER against packed file size on the built-in corpus.

Five trainings with the same model, data, epochs and seed (``recipes/``, composed with
Hydra's compose API): fp32 (``compression=none``), Lightning's ``ModelPruning`` at 50% and
75% (``compression=none`` plus the callback, on the sparsifier's schedule), and ours,
``sparse50_qreg8`` and ``sparse75_qreg4``. Every row of the table is a packed file
(``compress.export.pack``) evaluated after decoding it with ``compress.load``:

* fp32 (fp32 passthrough); PTQ at each setting's bits; one-shot pruning + PTQ (from the
  fp32 weights);
* ModelPruning + PTQ; ours (bits, scales and masks from the callbacks' state).

Trainings run as separate processes (``--jobs`` at a time, ``--threads`` each); each writes
its checkpoint, packed files and figures under ``<out>/accuracy_runs/<training>/``; the
table is built from those files afterwards. ``--reuse`` skips a training whose checkpoint
is already there. Results: ``<out>/accuracy.md`` and ``<out>/accuracy.json``.

    python -m compress.bench.accuracy --size tiny             # the CI smoke run
    python -m compress.bench.accuracy --size full --jobs 2    # the figures (hours)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import tempfile
import time
from pathlib import Path

from compress.bench.baselines import label, plan, read_setting, row_order
from compress.bench.jobs import READY, run_jobs
from compress.checks import check_choice, check_int

SETTINGS = (("easy", "sparse50_qreg8"), ("hard", "sparse75_qreg4"))  # (setting, recipe of ours)
SPLIT = "test_voices"  # the split the targets are computed on (voices never heard in training)


OPTIONS = ("size", "epochs", "jobs", "data_dir", "reuse")  # the section's own options


def add_arguments(parser, prefix: str = "accuracy-") -> None:
    """The section's options, named ``--accuracy-size`` etc. under ``python -m compress.bench``.

    The prefix keeps them apart from other sections' options (``overhead`` has its own
    ``--epochs``); ``--threads`` (per training) and ``--out`` are the dispatcher's.
    ``python -m compress.bench.accuracy`` uses ``prefix=""``.
    """
    add_training_arguments(parser, prefix, epochs_help="epochs of every training (default: the recipe's)",
                           reuse_help="keep a training whose checkpoint was made with the same settings and "
                                      "composed recipe (model, compression, trainer, seed)")


def _options(args) -> argparse.Namespace:
    """The options from ``args`` (either naming style), defaults for what is missing."""
    opts = read_options(args, "accuracy", OPTIONS)
    if opts.epochs is not None:
        check_int("--epochs", opts.epochs, min=1)
    return opts


# -- shared by the sections that train (accuracy, finetune) -----------------------------------
def add_training_arguments(parser, prefix: str, epochs_help: str, reuse_help: str) -> None:
    """``--{prefix}size``, ``epochs``, ``jobs``, ``data-dir`` and ``reuse``: the options of
    every section that trains, each section saying what its epochs and reuse mean."""
    parser.add_argument(f"--{prefix}size", choices=("tiny", "full"), default="full",
                        help="tiny: the experiment=tiny settings (CI); full: the experiment=full recipe (default)")
    parser.add_argument(f"--{prefix}epochs", type=int, default=None, help=epochs_help)
    parser.add_argument(f"--{prefix}jobs", type=int, default=2, help="trainings run in parallel (default 2)")
    parser.add_argument(f"--{prefix}data-dir", default=None, help="corpus cache root (default: the datamodule's)")
    parser.add_argument(f"--{prefix}reuse", action="store_true", help=reuse_help)


def read_options(args, section: str, options, **defaults) -> argparse.Namespace:
    """A training section's options from ``args``: ``--{section}-*`` under the dispatcher,
    unprefixed under ``python -m compress.bench.{section}``; defaults for what is missing
    (``defaults`` adds the section's own). Checks ``size``, ``jobs`` and ``threads``."""
    prefixed = any(hasattr(args, f"{section}_{k}") for k in options)
    opts = argparse.Namespace(size="full", epochs=None, jobs=2, data_dir=None, reuse=False, **defaults,
                              threads=1, out=None)
    for k in vars(opts):
        v = getattr(args, f"{section}_{k}" if prefixed and k in options else k, None)
        if v is not None:
            setattr(opts, k, v)
    check_choice("--size", opts.size, ("tiny", "full"))
    for name in ("jobs", "threads"):
        check_int(f"--{name}", getattr(opts, name), min=1)
    return opts


def output_dir(opts, section: str) -> Path:
    """``--out``, by default ``bench/`` for a full run and a fresh temporary folder for a tiny one."""
    if opts.out is None:
        opts.out = "bench" if opts.size == "full" else tempfile.mkdtemp(prefix=f"compress-bench-{section}-")
    return Path(opts.out).resolve()


def command_line(module: str, opts, *extra: str) -> str:
    """The command that reruns ``module`` with ``opts`` (``extra``: the section's own options)."""
    parts = ["python", "-m", module, "--size", opts.size, "--jobs", str(opts.jobs),
             "--threads", str(opts.threads), "--out", str(opts.out), *extra]
    if opts.data_dir is not None:
        parts += ["--data-dir", str(opts.data_dir)]
    if opts.reuse:
        parts.append("--reuse")
    return shlex.join(parts)


def machine(opts) -> dict:
    """The machine and the parallelism a run had, for its report."""
    import torch

    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "jobs": opts.jobs, "threads_per_training": opts.threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def write_report(out: Path, stem: str, results: dict, text: str) -> None:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md`` (``text``), printing the table."""
    from compress.atomic import write_text

    write_text(out / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    write_text(out / f"{stem}.md", text)
    print(text, flush=True)
    print(f"written: {out / f'{stem}.md'}, {out / f'{stem}.json'}", flush=True)


def section_parser(module: str, doc: str, add_arguments) -> argparse.ArgumentParser:
    """The parser of ``python -m {module}``: the section's options unprefixed, ``--threads`` and ``--out``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    add_arguments(parser, prefix="")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training (default 1)")
    parser.add_argument("--out", default=None, help="output folder (default bench/ for full, a temp dir for tiny)")
    return parser


def base_overrides(opts) -> list[str]:
    """Hydra overrides shared by every training (so model, data, epochs and seed match)."""
    # full: the longer recipe (experiment=full), not the quick default run.
    out = ["experiment=tiny"] if opts.size == "tiny" else ["experiment=full"]
    out.append(f"threads={opts.threads}")
    if opts.epochs is not None:
        out.append(f"trainer.max_epochs={opts.epochs}")
    if opts.data_dir is not None:
        out.append(f"data.data_dir={json.dumps(str(opts.data_dir))}")
    return out


def compose_config(overrides: list[str]):
    """``recipes/train.yaml`` composed with ``overrides`` (the recipe name set to the bench's)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from compress.pipeline import RECIPES

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose("train", overrides=[*overrides, "recipe=bench-accuracy"])


# -- one training (runs in its own process) ---------------------------------------------------
def _epoch_logger():
    import pytorch_lightning as pl

    class EpochLog(pl.Callback):
        """One line per finished epoch in the training's log (the parent shows the latest)."""

        def on_fit_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
            print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done at "
                  f"{time.perf_counter() - self.t0:.0f} s, train/loss {loss:.3f}", flush=True)

    return EpochLog()


def work(spec: dict) -> dict:
    """Train one model (unless reused), pack and evaluate its rows; writes ``rows.json``."""

    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf

    from compress.atomic import write_text
    from compress.bench.baselines import lightning_pruning, pack_row
    from compress.checkpoint import load_weights
    from compress.pipeline import (
        build_callbacks,
        build_datamodule,
        build_model,
        evaluate,
        evaluate_loader,
        instantiate,
        quiet_lightning,
        reload,
    )
    from compress.targets import find_targets

    cfg = compose_config(spec["overrides"] + [f"compression={spec['compression']}"])
    torch.set_num_threads(int(cfg.threads))
    run_dir = Path(spec["dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, meta_path = run_dir / "model.ckpt", run_dir / "train.json"
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = build_datamodule(cfg)
    settings = {k: spec[k] for k in ("overrides", "compression", "pruning")}
    if spec.get("init_from"):  # fine-tuning: the trained checkpoint it starts from is part of the settings
        settings["init_from"] = spec["init_from"]
    # The composed recipe too, not only its name: an edited recipe file must retrain.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    settings["config"] = {k: resolved[k] for k in ("model", "compression", "trainer", "seed")}
    if spec.get("rows_of"):  # more rows of another training's checkpoint: nothing to train here
        ckpt, meta_path = Path(spec["rows_of"]) / "model.ckpt", Path(spec["rows_of"]) / "train.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if spec.get("rows_of"):
        if not ckpt.is_file() or meta.get("settings") != settings:
            raise ValueError(f"rows_of: {spec['rows_of']} holds no checkpoint trained with this spec's settings")
        print(f"rows of {ckpt}", flush=True)
    elif spec.get("reuse") and ckpt.is_file() and meta.get("settings") == settings:
        print(f"reusing {ckpt}", flush=True)
    else:
        model = build_model(cfg)
        if spec.get("init_from"):
            load_weights(model, spec["init_from"])
        callbacks = build_callbacks(cfg) + [_epoch_logger()]
        if spec["pruning"]:
            callbacks.append(lightning_pruning(model, max_epochs=int(cfg.trainer.max_epochs), **spec["pruning"]))
        trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, default_root_dir=str(run_dir))
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        seconds = time.perf_counter() - t0
        trainer.save_checkpoint(str(run_dir / ".model.ckpt.tmp"))
        os.replace(run_dir / ".model.ckpt.tmp", ckpt)
        meta = {"train_seconds": seconds, "epochs": int(trainer.current_epoch), "threads": torch.get_num_threads(),
                "settings": settings}
        write_text(meta_path, json.dumps(meta, indent=2) + "\n")

    print(READY, flush=True)  # run_jobs may start the trainings that start from this checkpoint
    quiet_lightning()

    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    targets = [t.name for t in find_targets(build_model(cfg))]
    meta["target_zeros"] = {n: [int((sd[n] == 0).sum()), sd[n].numel()] for n in targets}
    rows = []
    for row in spec["rows"]:
        path = run_dir / f"{row['key']}.psq"
        cache = run_dir / f"{row['key']}.row.json"  # one row's figures, kept for --reuse
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if spec.get("reuse") and path.is_file() and cached.get("settings") == settings and \
                cached.get("row") == row and cached.get("train_seconds") == meta["train_seconds"]:
            print(f"reusing the figures of {row['key']}", flush=True)
            rows.append(cached["result"])
            continue
        print(f"packing and testing {row['key']}", flush=True)
        pack_row(row, sd, ckpt, path, targets)
        rebuilt = reload(cfg, path)
        decoded = dict(rebuilt.named_parameters())
        zeros = sum(int((decoded[n] == 0).sum()) for n in targets)
        total = sum(decoded[n].numel() for n in targets)
        valid = evaluate_loader(rebuilt, dm.val_dataloader())
        rows.append({**row, "training": spec["name"], "bytes": path.stat().st_size,
                     "decoded_sparsity": zeros / max(total, 1), "train_seconds": meta["train_seconds"],
                     "metrics": evaluate(rebuilt, dm.test_dataloaders()),
                     "valid": valid})  # the split variants are chosen on; never the test splits
        write_text(cache, json.dumps({"settings": settings, "row": row, "train_seconds": meta["train_seconds"],
                                      "result": rows[-1]}, indent=2) + "\n")
    out = {"name": spec["name"], "train": meta, "rows": rows}
    write_text(run_dir / "rows.json", json.dumps(out, indent=2) + "\n")
    return out


# -- the table and the targets ------------------------------------------------------------
LIMITS = (("easy", 0.5), ("hard", 2.0))  # WER points (absolute) ours may lose against fp32
BEAT = "hard"  # the setting where ours must beat the baselines of the same size


def check_targets(rows: list[dict], split: str = SPLIT) -> list[dict]:
    """PASS/MISS of each target, computed from the rows' WER on ``split``.

    Targets: ours loses at most ``LIMITS`` WER points against fp32 in each setting, and in
    the ``BEAT`` setting has a strictly lower WER than every baseline of the same size
    (same sparsity and bits: one-shot pruning and ModelPruning, each + PTQ).
    """
    def find(method, setting):
        hits = [r for r in rows if r["method"] == method and r["setting"] == setting]
        if len(hits) != 1:
            raise ValueError(f"rows: expected one {method!r} row for setting {setting!r}, found {len(hits)}")
        return hits[0]

    def wer(r):
        return 100.0 * float(r["metrics"][split]["wer"])

    fp32, out = wer(find("fp32", None)), []
    for setting, limit in LIMITS:
        ours = find("ours", setting)
        loss = wer(ours) - fp32
        # 1e-9: WERs are ratios of counts; do not let float noise turn an exact tie into a miss.
        out.append({"target": f"{label(ours)} loses <= {limit:g} WER points against fp32", "kind": "loss",
                    "value": loss, "limit": limit, "pass": loss <= limit + 1e-9})
    ours = find("ours", BEAT)
    peers = [find(m, BEAT) for m in ("oneshot", "lightning")]
    margin = wer(ours) - min(wer(r) for r in peers)
    out.append({"target": f"{label(ours)} beats {' and '.join(label(r) for r in peers)} (WER lower)",
                "kind": "beat", "value": margin, "limit": 0.0, "pass": margin < 0})
    return out


def format_markdown(results: dict) -> str:
    """``accuracy.md``: the table, the targets, the run's command, time and machine."""
    rows, m = results["rows"], results["machine"]
    splits = list(rows[0]["metrics"])
    fp32_bytes = next(r["bytes"] for r in rows if r["method"] == "fp32")
    head = " | ".join(f"WER {s} | CER {s}" for s in splits)
    lines = [
        "# Accuracy and size on the built-in corpus", "",
        f"Same model, data, {results['epochs']} epochs and seed for every row. Every row is a packed file "
        "(`compress.export.pack`) evaluated after decoding it with `compress.load`. WER/CER in %.", "",
        f"| method | {head} | packed bytes | ratio to fp32 | sparsity | training s |",
        "|---" * (5 + 2 * len(splits)) + "|",
    ]
    for r in rows:
        scores = " | ".join(f"{100 * r['metrics'][s]['wer']:.2f} | {100 * r['metrics'][s]['cer']:.2f}" for s in splits)
        lines.append(f"| {label(r)} | {scores} | {r['bytes']:,} | {fp32_bytes / r['bytes']:.2f}x | "
                     f"{100 * r['decoded_sparsity']:.1f}% | {r['train_seconds']:.0f} |")
    lines += ["", f"## Targets (WER on {results['split']}, in points)", ""]
    for t in results["targets"]:
        what = (f"WER loss {t['value']:+.2f} points (limit {t['limit']:.2f})" if t["kind"] == "loss" else
                f"WER minus the best of them {t['value']:+.2f} points (must be < 0)")
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {what}")
    lines += [
        "", "## Run", "",
        f"- command: `{results['command']}` ({results['size']} size)",
        f"- wall time: {results['wall_seconds']:.0f} s ({results['wall_seconds'] / 3600:.2f} h)",
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs, {m['jobs']} training(s) at a time x "
        f"{m['threads_per_training']} torch thread(s), torch {m['torch']}, Python {m['python']}, {m['platform']}",
        "", "## Notes", "",
        "- sparsity: zeros among the compressed tensors of the decoded file (rounding to the grid can add a few).",
        "- PTQ rows: per-channel scales from `grid.compute_scale` once after training, MSE-optimal clipping at "
        "<= 4 bits (as the regularizer), then `snap`. One-shot rows prune each tensor once to an exact count by "
        "magnitude before PTQ. PTQ and one-shot rows come from the fp32 training and show its training time.",
        "- Lightning `ModelPruning` (`l1_unstructured`, per tensor, same targets, lottery-ticket reset off) prunes "
        "at the end of epoch e to the sparsity the sparsifier installs at the start of epoch e+1, so both follow "
        "the same cubic schedule at the same moments.",
        f"- training times are wall times with {m['jobs']} training(s) sharing the machine; compare them loosely.",
    ]
    return "\n".join(lines) + "\n"


# -- the parent: plan, launch (compress.bench.jobs), collect -------------------------------------
def _command(opts) -> str:
    return command_line("compress.bench.accuracy", opts,
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
    specs = [{**job, "overrides": base, "dir": str(runs / job["name"]), "reuse": bool(opts.reuse)}
             for job in plan(settings)]
    run_jobs(specs, opts.jobs, opts.threads, runs)
    done = {s["name"]: json.loads((Path(s["dir"]) / "rows.json").read_text()) for s in specs}
    rows = [r for s in specs for r in done[s["name"]]["rows"]]
    rows = sorted(rows, key=row_order)
    results = {
        "command": _command(opts),
        "size": opts.size,
        "epochs": int(cfg.trainer.max_epochs),
        "split": SPLIT,
        "settings": settings,
        "rows": rows,
        "trainings": {n: d["train"] for n, d in done.items()},
        "targets": check_targets(rows, SPLIT),
        "wall_seconds": time.perf_counter() - t0,
        "machine": machine(opts),
    }
    write_report(out, "accuracy", results, format_markdown(results))
    return results


def main(argv=None) -> None:
    """``python -m compress.bench.accuracy``."""
    parser = section_parser("compress.bench.accuracy", __doc__, add_arguments)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work(json.loads(Path(args.worker).read_text()))
    else:
        run(args)


if __name__ == "__main__":
    main()
