"""Bench section "engine": real-time factor of the C engine against PyTorch fp32.

On one compress-train run directory (``model.psq`` + ``results.json``; ``--engine-run``),
on its ``test_voices`` utterances, one utterance at a time, on one thread:

* the real-time factor (compute seconds / audio seconds) of the C engine
  (``compress.native.engine``, the ``.psq`` its only weight input) and of PyTorch fp32 on
  the model rebuilt from the same file (``compress.pipeline.load_model``): the median over
  ``--engine-reps`` repetitions, the two engines interleaved utterance by utterance after
  one untimed warm-up pass, so drift in machine load hits both alike;
* their ratio, against the target of at least ``TARGET``x (PASS/MISS);
* the WER/CER of both on the split, which must be equal (shown as a check), and the
  storage the engine chose per matrix.

Without ``--engine-run`` the section trains a run into a temporary folder first:
``experiment=tiny`` for ``--engine-size tiny`` (the CI smoke form, seconds), the default
recipe with block-structured masks (``compression=sparse50_block8_qreg8``) for ``full``
(minutes). Figures go to ``<out>/engine.json`` with ``--out``.

Example:
    python -m compress.bench.engine --engine-size tiny
    python -m compress.bench.engine --engine-run outputs/2026-01-01/12-00-00 --out bench
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 2.0  # the C engine at least this many times faster than PyTorch fp32
REPS = 5
SPLIT = "test_voices"
SIZES = ("tiny", "full")
FULL_RECIPE = "sparse50_block8_qreg8"  # --engine-size full: the default run with 1 x 8 block masks


def add_arguments(group) -> None:
    """Options of this section, for the ``python -m compress.bench`` dispatcher."""
    group.add_argument("--engine-run", metavar="DIR", default=None,
                       help="run directory with model.psq and results.json (default: train one into a temp dir)")
    group.add_argument("--engine-size", choices=SIZES, default="full",
                       help="without --engine-run: train experiment=tiny (CI) or the default recipe with "
                            f"compression={FULL_RECIPE} (full, the default)")
    group.add_argument("--engine-reps", type=int, default=REPS, help=f"interleaved timed passes (default {REPS})")
    group.add_argument("--engine-storage", choices=("auto", "dense", "csr", "bsr"), default="auto",
                       help="the C engine's kernel storage for every matrix (default auto: engine.h's rule)")


def train_run(size: str, folder: Path, threads: int) -> Path:
    """A compress-train run into ``folder/run``: ``experiment=tiny`` (on a corpus of its own in
    ``folder``), or the default recipe with block-structured masks (``FULL_RECIPE``, the
    structure the engine's block-sparse kernels skip; the corpus cache of the default run)."""
    root = Path(__file__).resolve().parents[2]
    out = folder / "run"
    overrides = ((["experiment=tiny", f"data.data_dir={json.dumps(str(folder / 'corpus'))}"] if size == "tiny"
                  else [f"compression={FULL_RECIPE}"]) + [f"threads={threads}", f"hydra.run.dir={out}"])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "compress.train", *overrides], capture_output=True, text=True,
                          env=env, cwd=str(root))
    if proc.returncode != 0 or not (out / "model.psq").is_file():
        raise RuntimeError(f"compress.train {' '.join(overrides)} failed:\n{proc.stderr[-2000:]}")
    return out


def utterances(run_dir: Path) -> tuple[list, list, list]:
    """The split's ``(features (T, F), text, audio seconds)`` with the run's own features."""
    from omegaconf import OmegaConf

    from compress.pipeline import build_datamodule

    cfg = OmegaConf.create(json.loads((run_dir / "results.json").read_text())["config"])
    dm = build_datamodule(cfg, progress=False)
    dm.setup()
    ds = dm.datasets[SPLIT]
    feats, texts, seconds = [], [], []
    for i in range(len(ds)):
        f, _, text = ds[i]
        row = ds.manifest.rows[i]
        feats.append(f)
        texts.append(text)
        seconds.append(float(row.get("duration") or row["num_samples"] / row["sample_rate"]))
    return feats, texts, seconds


def error_rates(preds: list, texts: list) -> dict:
    """Corpus-level WER/CER (the models' test metrics)."""
    from torchmetrics.text import CharErrorRate, WordErrorRate

    return {"wer": float(WordErrorRate()(preds, texts)), "cer": float(CharErrorRate()(preds, texts))}


def measure(run_dir: Path, reps: int, storage: str) -> dict:
    """The figures of the module docstring for one run directory."""
    import torch

    from compress.native.engine import Engine, EngineConfig, tokens_to_text
    from compress.pipeline import load_model

    psq = run_dir / "model.psq"
    model = load_model(psq).model  # PyTorch fp32, the weights decoded from the same file
    engine = Engine(psq, EngineConfig.from_hparams(model.hparams, storage=storage))
    feats, texts, seconds = utterances(run_dir)

    def run_torch(f):
        (text,) = model.transcribe(f[None], torch.tensor([f.shape[0]]))
        return text

    def run_c(f):
        return tokens_to_text(engine.run(f).tokens)

    with torch.inference_mode():
        preds = {"torch": [run_torch(f) for f in feats], "c": [run_c(f) for f in feats]}  # also the warm-up
        totals = {"torch": [], "c": []}
        for _ in range(reps):
            spent = {"torch": 0.0, "c": 0.0}
            for f in feats:  # interleaved per utterance
                for name, fn in (("torch", run_torch), ("c", run_c)):
                    t0 = time.perf_counter()
                    fn(f)
                    spent[name] += time.perf_counter() - t0
            for name in spent:
                totals[name].append(spent[name])
    audio = sum(seconds)
    med = {k: statistics.median(v) for k, v in totals.items()}
    rates = {k: error_rates(v, texts) for k, v in preds.items()}
    speedup = med["torch"] / med["c"]
    info = engine.info
    return {
        "run": str(run_dir), "split": SPLIT, "utterances": len(feats), "audio_s": audio, "reps": reps,
        "storage_option": storage, "storage": info["storage"], "block": info["block"],
        "density": [n / max(e, 1) for n, e in zip(info["nnz"], info["numel"])],
        "model_bytes": info["model_bytes"],
        "torch": {"seconds": med["torch"], "rtf": med["torch"] / audio, **rates["torch"]},
        "c": {"seconds": med["c"], "rtf": med["c"] / audio, **rates["c"]},
        "speedup": speedup, "target": TARGET, "target_met": speedup >= TARGET,
        "same_wer": rates["c"] == rates["torch"],
        "identical_transcripts": sum(a == b for a, b in zip(preds["c"], preds["torch"])),
    }


def markdown(r: dict) -> str:
    """The section's report."""
    check = "equal" if r["same_wer"] else "DIFFERENT: MISS"
    lines = [
        f"== engine: {r['split']} of {r['run']}, {r['utterances']} utterances ({r['audio_s']:.1f} s of audio), "
        f"one at a time, one thread, median of {r['reps']} interleaved passes",
        "",
        "| engine | RTF | seconds | WER | CER |",
        "|---|---|---|---|---|",
        f"| PyTorch fp32 (from model.psq) | {r['torch']['rtf']:.5f} | {r['torch']['seconds']:.4f} | "
        f"{100 * r['torch']['wer']:.2f}% | {100 * r['torch']['cer']:.2f}% |",
        f"| C engine int8 ({r['storage_option']}) | {r['c']['rtf']:.5f} | {r['c']['seconds']:.4f} | "
        f"{100 * r['c']['wer']:.2f}% | {100 * r['c']['cer']:.2f}% |",
        "",
        f"- speed-up {r['speedup']:.2f}x (target >= {r['target']:.0f}x: {'PASS' if r['target_met'] else 'MISS'})",
        f"- WER/CER of the two: {check}; identical transcripts {r['identical_transcripts']}/{r['utterances']}",
        "- storage per matrix (conv1, conv2, LSTM ih/hh per layer and direction, head): "
        + ", ".join(f"{s}{b or ''} (d={d:.2f})" for s, b, d in zip(r["storage"], r["block"], r["density"]))
        + f"; {r['model_bytes']} bytes of model memory",
    ]
    return "\n".join(lines)


def run(args=None) -> dict:
    """Run the section and print it; returns the figures (``"markdown"``: the report)."""
    import torch

    from compress.checks import check_int

    threads = int(getattr(args, "threads", 0) or 1)
    reps = check_int("--engine-reps", getattr(args, "engine_reps", REPS), min=1)
    size = getattr(args, "engine_size", "full") or "full"
    storage = getattr(args, "engine_storage", "auto") or "auto"
    torch.set_num_threads(threads)
    given = getattr(args, "engine_run", None)
    with tempfile.TemporaryDirectory(prefix="compress-bench-engine-") as tmp:
        if given is None:
            run_dir = train_run(size, Path(tmp), threads)
        else:
            run_dir = Path(given)
            if not (run_dir / "model.psq").is_file() or not (run_dir / "results.json").is_file():
                raise SystemExit(f"--engine-run must be a run directory with model.psq and results.json, "
                                 f"got {given!r}")
        result = measure(run_dir, reps, storage)
    result.update(size=size if given is None else "given", threads=torch.get_num_threads())
    if given is None:  # the temporary folder is gone: say what it held
        result["run"] = "experiment=tiny" if size == "tiny" else f"the default recipe, compression={FULL_RECIPE}"
        result["run"] += ", trained for this run"
    result["markdown"] = markdown(result)
    print(result["markdown"])
    out = getattr(args, "out", None)
    if out:
        from compress.atomic import write_text

        write_text(os.path.join(out, "engine.json"), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.bench.engine", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", metavar="DIR", default=None, help="write DIR/engine.json")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
