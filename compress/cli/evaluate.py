"""``compress evaluate MODEL --manifest-dir DIR``: WER/CER of a trained model on test manifests.

The work is ``compress.pipeline.evaluate_manifests``; this module parses, calls and prints.

Example:
    >>> from compress.cli import main
    >>> main(["evaluate", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import json

# How the library's parameter names read on this command line.
NAMES = {"model": "MODEL", "recipe": "--recipe", "manifest_dir": "--manifest-dir", "audio": "AUDIO",
         "output": "--output", "engine": "--engine"}


def add_recipe_option(p: argparse.ArgumentParser) -> None:
    """``MODEL`` and ``--recipe``, shared with ``transcribe``."""
    p.add_argument("model", metavar="MODEL",
                   help="model.ckpt or model.psq of a compress-train run; its recipe is read from the "
                        "results.json (or .hydra/config.yaml) beside it")
    p.add_argument("--recipe", metavar="PATH", default=None,
                   help="the recipe MODEL was trained with: a results.json or a Hydra .hydra/config.yaml "
                        "(default: the one beside MODEL; a .ckpt alone uses its saved hyperparameters)")


def add_engine_option(p: argparse.ArgumentParser) -> None:
    """``--engine {torch,c}``, shared with ``transcribe``."""
    p.add_argument("--engine", choices=("torch", "c"), default="torch",
                   help="torch: the PyTorch model (default); c: the C engine on a ctc_lstm MODEL.psq "
                        "(int8 kernels, one utterance at a time)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="WER/CER of a .ckpt or .psq model on test manifests",
        description="Evaluate a trained model (a compress-train .ckpt, or a .psq with its recipe) on every "
                    "test*.jsonl manifest of DIR (train/valid manifests are not needed), with the recipe's "
                    "features; print WER/CER per split and optionally write them as JSON.")
    add_recipe_option(p)
    p.add_argument("--manifest-dir", metavar="DIR", required=True,
                   help="folder with test*.jsonl manifests ({\"audio\": WAV path, \"text\": transcript} per "
                        "line); each file is a split named after it")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write {split: {wer, cer}} as JSON to FILE (atomically)")
    add_engine_option(p)
    p.set_defaults(func=run)


@contextlib.contextmanager
def model_errors():
    """The library's errors about a model and its recipe, as one-line command errors."""
    from compress.cli import CliError
    from compress.errors import ArgumentError
    from compress.recipe_checks import ConfigError

    try:
        yield
    except ArgumentError as err:
        raise CliError(err.spell(NAMES)) from None
    except ConfigError as err:
        raise CliError(f"--recipe: {err}") from None


def run(args: argparse.Namespace) -> int:
    from compress.atomic import write_text
    from compress.pipeline import evaluate_manifests

    with model_errors():
        metrics = evaluate_manifests(args.model, args.manifest_dir, recipe=args.recipe, engine=args.engine)
    print("| split | WER | CER |\n|---|---|---|")
    for split, m in metrics.items():
        print(f"| {split} | {100 * m['wer']:.2f}% | {100 * m['cer']:.2f}% |")
    if args.output:
        write_text(args.output, json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0
