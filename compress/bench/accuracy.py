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
import os
import platform
import shlex
import tempfile
import time
from pathlib import Path

from compress.bench.baselines import METHODS, label, read_setting
from compress.bench.baselines import plan as baselines_plan
from compress.bench.jobs import READY, run_jobs
from compress.checks import check_choice, check_int

SETTINGS = (("easy", "sparse50_qreg8"), ("hard", "sparse75_qreg4"))  # (setting, recipe of ours)
SPLIT = "test_voices"  # the split the targets are computed on (voices never heard in training)
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


OPTIONS = ("size", "epochs", "jobs", "data_dir", "reuse", "groups")  # the section's own options


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


def _options(args) -> argparse.Namespace:
    """The options from ``args`` (either naming style), defaults for what is missing."""
    opts = read_options(args, "accuracy", OPTIONS, groups=",".join(GROUPS))
    if opts.epochs is not None:
        check_int("--epochs", opts.epochs, min=1)
    opts.groups = check_groups(opts.groups, GROUPS)
    return opts


def check_groups(value, allowed) -> list[str]:
    """``--groups``: a comma-separated, non-empty list of names from ``allowed``."""
    groups = [g for g in (value.split(",") if isinstance(value, str) else list(value)) if g]
    bad = [g for g in groups if g not in allowed]
    if bad or not groups:
        raise ValueError(f"--groups must be a comma-separated list of {allowed}, got {value!r}")
    return groups


def plan(settings: dict, groups) -> list[dict]:
    """The trainings of ``groups`` (fp32 always first) and the rows each yields.

    Args:
        settings: setting name -> ``read_setting`` of our recipe for it ("easy", "hard").
        groups: some of ``GROUPS``.

    Returns:
        ``baselines.plan``'s jobs (only fp32 without "core"), then those of ``MORE``.
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
    return jobs


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
LIMITS = {8: 0.5, 6: 0.5, 4: 1.0}  # WER points (absolute) ours may lose against fp32, by bit width
BEAT = "hard"  # the setting where ours must beat the baselines of the same size
BASELINES = ("oneshot", "lightning", "sparse", "fakequant")  # in METHODS order


def row_order(row: dict) -> tuple:
    """Sort key: fp32 first, then the settings in ``ORDER``, wider grids first, methods in ``METHODS`` order."""
    return (ORDER.index(row["setting"]), -(row.get("bits") or 0), METHODS.index(row["method"]))


def check_targets(rows: list[dict], split: str = SPLIT) -> list[dict]:
    """PASS/MISS of each target, computed from the rows' WER on ``split``.

    Targets: ours (the settings "easy", "hard" and "bits") loses at most ``LIMITS[bits]``
    WER points against fp32, and in the ``BEAT`` setting has a strictly lower WER than
    each baseline of the same size that was run (one-shot pruning, ModelPruning and the
    sparsifier alone, each + PTQ; fake-quant QAT). One seed: a lower WER is reported as
    such, not as a win (the fine-tuning section has the seed study).
    """
    def find(method, setting, required=True):
        hits = [r for r in rows if r["method"] == method and r["setting"] == setting]
        if len(hits) > 1 or (required and not hits):
            raise ValueError(f"rows: expected one {method!r} row for setting {setting!r}, found {len(hits)}")
        return hits[0] if hits else None

    def wer(r):
        return 100.0 * float(r["metrics"][split]["wer"])

    fp32, out = wer(find("fp32", None)), []
    ours_rows = [r for r in rows if r["method"] == "ours" and r["setting"] in ("easy", "hard", "bits")]
    for ours in sorted(ours_rows, key=row_order):
        limit = LIMITS.get(int(ours["bits"]))
        if limit is None:
            continue
        loss = wer(ours) - fp32
        # 1e-9: WERs are ratios of counts; do not let float noise turn an exact tie into a miss.
        out.append({"target": f"{label(ours)} loses <= {limit:g} WER points against fp32", "kind": "loss",
                    "value": loss, "limit": limit, "pass": loss <= limit + 1e-9})
    for ours in sorted((r for r in rows if r["method"] == "ours" and r["setting"] in ("defaults", "ablation")
                        and r["target_sparsity"] == 0.0), key=lambda r: -int(r["bits"])):
        ptq = next((r for r in rows if r["method"] == "ptq" and r["bits"] == ours["bits"]), None)
        if ptq is not None:  # the regularizer's defaults, alone, against rounding after training
            margin = wer(ours) - wer(ptq)
            out.append({"target": f"{label(ours)} (defaults, no sparsity) no worse than {label(ptq)}",
                        "kind": "defaults", "value": margin, "limit": 0.0, "pass": margin <= 1e-9})
    ours = find("ours", BEAT)
    for method in BASELINES:
        peer = find(method, BEAT, required=False)
        if peer is None:
            continue
        margin = wer(ours) - wer(peer)
        out.append({"target": f"{label(ours)} beats {label(peer)} (WER lower)", "kind": "beat",
                    "value": margin, "limit": 0.0, "pass": margin < 0})
    return out


def format_markdown(results: dict) -> str:
    """``accuracy.md``: the table, the targets, the run's command, time and machine."""
    rows, m = results["rows"], results["machine"]
    splits = list(rows[0]["metrics"])
    fp32_bytes = next(r["bytes"] for r in rows if r["method"] == "fp32")
    head = " | ".join(f"WER {s} | CER {s}" for s in splits)
    lines = [
        "# Accuracy and size on the built-in corpus", "",
        f"From scratch: the same model, data, {results['epochs']} epochs and seed (0) for every row. Every row "
        "is a packed file (`compress.export.pack`) evaluated after decoding it with `compress.load`. WER/CER in %. "
        "One seed: the seed study is the fine-tuning protocol's ([accuracy_finetune.md](accuracy_finetune.md)).",
        "",
        f"| method | {head} | WER valid | packed bytes | ratio to fp32 | sparsity | training s |",
        "|---" * (6 + 2 * len(splits)) + "|",
    ]
    for r in rows:
        scores = " | ".join(f"{100 * r['metrics'][s]['wer']:.2f} | {100 * r['metrics'][s]['cer']:.2f}" for s in splits)
        valid = f"{100 * r['valid']['wer']:.2f}" if "valid" in r else "-"
        lines.append(f"| {label(r)} | {scores} | {valid} | {r['bytes']:,} | {fp32_bytes / r['bytes']:.2f}x | "
                     f"{100 * r['decoded_sparsity']:.1f}% | {r['train_seconds']:.0f} |")
    lines += ["", f"## Targets (WER on {results['split']}, in points)", ""]
    for t in results["targets"]:
        what = {"loss": f"WER loss {t['value']:+.2f} points (limit {t['limit']:.2f})",
                "defaults": f"WER difference {t['value']:+.2f} points (must be <= 0)",
                "beat": f"WER difference {t['value']:+.2f} points (must be < 0; one seed, so not a win by itself)"}[t["kind"]]
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {what}")
    lines += [
        "", "## Run", "",
        f"- command: `{results['command']}` ({results['size']} size)",
        f"- wall time: {results['wall_seconds']:.0f} s ({results['wall_seconds'] / 3600:.2f} h)",
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs, {m['jobs']} training(s) at a time x "
        f"{m['threads_per_training']} torch thread(s), torch {m['torch']}, Python {m['python']}, {m['platform']}",
        f"- plot: `{results['plot']}`" if results.get("plot") else "- plot: not written (matplotlib missing)",
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
    return command_line("compress.bench.accuracy", opts, "--groups", ",".join(opts.groups),
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
    specs = [{**job, "overrides": base + job.pop("extra", []), "dir": str(runs / job["name"]), "reuse": bool(opts.reuse)}
             for job in plan(settings, opts.groups)]
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
    from compress.bench.finetune import aggregate  # the fine-tuning section imports this module
    from compress.bench.plot import plot

    if plot(aggregate([{**r, "seed": 0} for r in rows]), out / "accuracy.png",
            f"From scratch ({results['epochs']} epochs, seed 0): WER against size"):
        results["plot"] = "accuracy.png"
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
