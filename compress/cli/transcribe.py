"""``compress transcribe MODEL a.wav b.wav``: the text of each WAV file.

The work is ``compress.pipeline.transcribe_files``; this module parses, calls and prints.

Example:
    >>> from compress.cli import main
    >>> main(["transcribe", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse

from compress.cli.evaluate import add_engine_option, add_recipe_option, model_errors


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "transcribe", help="transcribe WAV files with a .ckpt or .psq model",
        description="Decode each WAV file (PCM 8/16/32-bit, any rate: resampled to 16 kHz, mixed to mono) "
                    "with a trained model, on the recipe's features (n_mels, normalization); print one "
                    "line per file: PATH<TAB>TEXT.")
    add_recipe_option(p)
    p.add_argument("audio", metavar="AUDIO", nargs="+", help="WAV files")
    add_engine_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compress.pipeline import transcribe_files

    with model_errors():
        texts = transcribe_files(args.model, args.audio, recipe=args.recipe, engine=args.engine)
    for path, text in texts:
        print(f"{path}\t{text}")
    return 0
