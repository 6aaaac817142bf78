"""The Hydra entry point: train a speech model with the compression callbacks, export it,
and check that the exported file decodes to the model that was tested.

    compress-train                                   # the default run (recipes/train.yaml)
    compress-train compression=sparse75_qreg4 trainer.max_epochs=20
    compress-train -m compression=none,sparse50_qreg8,sparse75_qreg4
    compress-train init_from=outputs/.../model.ckpt compression=sparse75_qreg4 trainer.max_epochs=4

Each run writes into its Hydra output directory:

- ``model.ckpt``: the final Lightning checkpoint (weights snapped to the grid, with the
  callbacks' masks and scales);
- ``tb/``: TensorBoard logs;
- ``model.psq``: the packed sparse-int8 export (and ``model.onnx`` with ``export.onnx=true``);
- ``results.json`` and ``results.md``: WER/CER of the trained model and of the model
  rebuilt from the packed file on every test split, file sizes, compression ratio, and
  the sparsity and bits of every compressed layer.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from compress.atomic import write_text
from compress.pipeline import (
    RECIPES,
    build_callbacks,
    build_datamodule,
    build_model,
    evaluate,
    instantiate,
    pack_checkpoint,
    quiet_lightning,
    reload,
)
from compress.recipe_checks import ConfigError, check_config

__all__ = ["RECIPES", "build_callbacks", "format_results", "main", "run"]


def _layer_table(model, bits: dict, masks: dict) -> list[dict]:
    """Sparsity and bits of every compressed tensor (the regularizer's or sparsifier's targets)."""
    params = dict(model.named_parameters())
    names = sorted(set(bits) | set(masks))
    rows = []
    for name in names:
        w = params[name].detach()
        rows.append(
            {
                "name": name,
                "shape": list(w.shape),
                "bits": bits.get(name),
                "sparsity": float((w == 0).sum()) / max(w.numel(), 1),
            }
        )
    return rows


def format_results(results: dict) -> str:
    """The short Markdown report of one run (``results.md``)."""
    lines = [
        f"# {results['recipe']}",
        "",
        "| split | WER trained | WER packed | CER trained | CER packed |",
        "|---|---|---|---|---|",
    ]
    for split, r in results["metrics"].items():
        lines.append(
            f"| {split} | {100 * r['trained']['wer']:.2f}% | {100 * r['packed']['wer']:.2f}% "
            f"| {100 * r['trained']['cer']:.2f}% | {100 * r['packed']['cer']:.2f}% |"
        )
    lines += [
        "",
        f"- packed file identical in accuracy to the trained model: {results['packed_matches_trained']}",
        f"- fp32 weights: {results['fp32_bytes']:,} bytes (state dict); checkpoint file: "
        f"{results['checkpoint_bytes']:,} bytes (with optimizer state)",
        f"- packed file: {results['packed_bytes']:,} bytes; ratio to fp32 weights: "
        f"{results['compression_ratio']:.2f}x",
        f"- compressed tensors: {len(results['layers'])}, overall sparsity "
        f"{100 * results['overall_sparsity']:.1f}%",
        f"- training time: {results['train_seconds']:.0f} s for {results['epochs']} epochs",
    ]
    timing = results.get("timing")
    if timing:
        st = timing["fit_stages"]
        steps = max(st["steps"], 1)
        per_step = ", ".join(f"{k} {1000 * st[k] / steps:.0f} ms" for k in
                             ("data", "forward", "backward", "callbacks", "optimizer"))
        lines.append(
            f"- wall time: data {timing['data']:.0f} s (corpus and features), training "
            f"{timing['fit']:.0f} s, test {timing['test_trained']:.0f} s, export and reload "
            f"{timing['export']:.0f} s, test of the packed model {timing['test_packed']:.0f} s")
        lines.append(f"- per training step ({st['steps']} steps): {per_step}; validation "
                     f"{st['validation']:.0f} s in all")
    if results.get("onnx_bytes"):
        lines.append(f"- ONNX (int8 initializers + DequantizeLinear): {results['onnx_bytes']:,} bytes")
    if results["layers"]:
        lines += ["", "| layer | shape | bits | sparsity |", "|---|---|---|---|"]
        for row in results["layers"]:
            shape = "x".join(map(str, row["shape"]))
            lines.append(f"| {row['name']} | {shape} | {row['bits'] or 'fp32'} | {100 * row['sparsity']:.1f}% |")
    return "\n".join(lines) + "\n"


def run(cfg, output_dir: str | os.PathLike) -> dict:
    """Train, test, export and re-test one recipe; returns the results dict."""
    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf
    from pytorch_lightning.loggers import TensorBoardLogger

    from compress.progress import RunProgress, StageTimer

    check_config(cfg)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(int(cfg.seed), workers=True)

    timing = {}
    t0 = time.perf_counter()
    dm = build_datamodule(cfg)
    # Corpus synthesis (first run only) and features, timed apart from training.
    dm.prepare_data()
    dm.setup("fit")
    timing["data"] = time.perf_counter() - t0
    model = build_model(cfg)
    if cfg.get("init_from"):  # fine-tune a trained model: its weights only
        from compress.checkpoint import load_weights

        try:
            load_weights(model, str(cfg.init_from))
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(str(err)) from None
    timer = StageTimer()
    callbacks = timer.around(build_callbacks(cfg))
    if cfg.trainer.get("enable_progress_bar", True):
        # Evaluation after fit: every test split, for the trained and the rebuilt model.
        after = 2 * sum(len(loader) for loader in dm.test_dataloaders().values())
        callbacks.append(RunProgress(after_fit_batches=after))
    logger = TensorBoardLogger(save_dir=str(out), name="tb", version="")
    trainer = instantiate(
        cfg.trainer, "trainer", callbacks=callbacks, logger=logger, default_root_dir=str(out),
        enable_checkpointing=False,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    train_seconds = time.perf_counter() - t0
    timing["fit"] = train_seconds
    timing["fit_stages"] = timer.summary()

    ckpt_path = out / "model.ckpt"
    tmp_ckpt = out / ".model.ckpt.tmp"
    trainer.save_checkpoint(str(tmp_ckpt))
    os.replace(tmp_ckpt, ckpt_path)
    if trainer.global_rank != 0:
        return {}

    quiet_lightning()
    model.eval()
    t0 = time.perf_counter()
    trained = evaluate(model, dm.test_dataloaders())
    timing["test_trained"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    packed_path = out / "model.psq"
    # Pruned-only runs are rounded to int8 (post-training); fp32 passes through.
    exported = pack_checkpoint(ckpt_path, packed_path, recipe=str(cfg.recipe), progress=True)
    state, bits, summary = exported.state, exported.bits, exported.summary

    rebuilt = reload(cfg, packed_path)
    timing["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = evaluate(rebuilt, dm.test_dataloaders())
    timing["test_packed"] = time.perf_counter() - t0

    # The fp32 baseline size is that of a real torch.save file. It is written in a private
    # temporary directory (removed even on error), never in the run directory; the file
    # name is kept because torch.save names the archive after it, which counts in bytes.
    with tempfile.TemporaryDirectory(prefix="compress-fp32-") as tmp:
        fp32_path = Path(tmp) / ".fp32_state_dict.pt"
        torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, fp32_path)
        fp32_bytes = fp32_path.stat().st_size

    onnx_bytes = None
    if cfg.export.get("onnx"):
        if not state.scales:
            print("export.onnx: skipped, the recipe has no QuantizationRegularizer (nothing to store as int8)")
        else:
            from compress.export.onnx import example_inputs, export_graphs

            x, lengths = example_inputs(2, 200, int(model.hparams.n_mels))
            graphs = export_graphs(model, state, str(out / "model.onnx"), x, lengths, opset=17)
            onnx_bytes = sum(g.size_bytes for g in graphs.values())

    layers = _layer_table(model, state.bits if state.has_regularizer else bits, state.masks)
    total = sum(torch.Size(r["shape"]).numel() for r in layers)
    zeros = sum(r["sparsity"] * torch.Size(r["shape"]).numel() for r in layers)
    results = {
        "recipe": str(cfg.recipe),
        "config": {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                   for k in cfg if k != "hydra"},
        "metrics": {s: {"trained": trained[s], "packed": packed[s]} for s in trained},
        "packed_matches_trained": trained == packed,
        "fp32_bytes": fp32_bytes,
        "checkpoint_bytes": ckpt_path.stat().st_size,
        "packed_bytes": packed_path.stat().st_size,
        "onnx_bytes": onnx_bytes,
        "compression_ratio": fp32_bytes / packed_path.stat().st_size,
        "overall_sparsity": zeros / total if total else 0.0,
        "layers": layers,
        "train_seconds": train_seconds,
        "timing": timing,
        "epochs": trainer.current_epoch,
        "packed_summary": str(summary),
    }
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(out / "results.md", format_results(results))
    return results


def _hydra_main():
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(config_path=str(RECIPES), config_name="train", version_base="1.3")
    def _main(cfg) -> None:
        try:
            results = run(cfg, HydraConfig.get().runtime.output_dir)
        except ConfigError as err:
            print(f"compress-train: config error: {err}", file=sys.stderr)
            sys.exit(2)
        if results:
            print()
            print(format_results(results))
            print(f"outputs: {HydraConfig.get().runtime.output_dir}")

    _main()


def main() -> None:
    """Console script ``compress-train``."""
    _hydra_main()


if __name__ == "__main__":
    main()
