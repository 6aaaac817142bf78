"""What the sections that train share (accuracy, finetune, structure): their options,
the Hydra composition of a training, and the worker that trains one spec, packs its rows
and evaluates them.

Each training runs as ``python -m compress.bench.training --worker SPEC`` (launched by
``compress.bench.jobs``), so it holds its own torch threads and a crash takes one
training, not the run.
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

from compress.bench.jobs import READY
from compress.checks import check_choice, check_int


def check_groups(value, allowed) -> list[str]:
    """``--groups``: a comma-separated, non-empty list of names from ``allowed``."""
    groups = [g for g in (value.split(",") if isinstance(value, str) else list(value)) if g]
    bad = [g for g in groups if g not in allowed]
    if bad or not groups:
        raise ValueError(f"--groups must be a comma-separated list of {allowed}, got {value!r}")
    return groups


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


def section_main(module: str, doc: str, add_arguments, run, argv=None) -> None:
    """``python -m {module}``: parse the options and run; bad options end in one line
    naming the option (exit status 2), not a traceback."""
    parser = section_parser(module, doc, add_arguments)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as e:  # the sections' option checks (compress.checks) raise ValueError
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def seed_overrides(seed: int) -> list[str]:
    """Training seed ``seed`` on the same corpus (seed 0's); seed 0 is the recipe as it is."""
    return [] if seed == 0 else [f"seed={seed}", "data.corpus.seed=0"]


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
    elif spec.get("no_train"):
        raise ValueError(f"--no-train: {run_dir} holds no checkpoint trained with this spec's settings")
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



def main(argv=None) -> None:
    """``python -m compress.bench.training --worker SPEC``: one training of a spec file."""
    parser = argparse.ArgumentParser(prog="python -m compress.bench.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", required=True, help="the spec file (JSON) written by compress.bench.jobs")
    work(json.loads(Path(parser.parse_args(argv).worker).read_text()))


if __name__ == "__main__":
    main()
