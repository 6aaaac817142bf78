"""``compress export CKPT -o MODEL.psq``: pack a checkpoint into the PSQ format.

Example:
    >>> from compress.cli import main
    >>> main(["export", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os

from compress.format.layout import EXTENSION

BIG_CHECKPOINT = 4 << 20  # bytes: ~1M fp32 parameters, where a progress bar starts to be worth it


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared with ``verify``: how to read a checkpoint without a regularizer state."""
    p.add_argument("--bits", type=int, default=None,
                   help="bit width (2..8) for a checkpoint without QuantizationRegularizer state (e.g. "
                        "sparsity only): scales are then computed and weights snapped (post-training)")
    p.add_argument("--granularity", choices=("channel", "tensor"), default="channel",
                   help="scale granularity for computed scales (default: channel)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow arbitrary pickled objects in CKPT (only for checkpoints you trust)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="pack a checkpoint into a .psq file",
        description="Pack a Lightning checkpoint (masks, scales and bits from the compression callbacks' "
                    "state) or a saved state dict into the packed sparse-int8 format, then print a summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="Lightning checkpoint (.ckpt) or state dict (.pt)")
    p.add_argument("-o", "--output", metavar="FILE", help=f"output file (default: CKPT with {EXTENSION})")
    add_common(p)
    p.add_argument("--fp16", action="store_true", help="store unquantized float32 tensors as float16")
    p.add_argument("--scales32", action="store_true",
                   help="keep float32 scales where 16 bits would be exact (for readers without that feature)")
    p.add_argument("--recipe", default=None, help="recipe name recorded in the file's metadata")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from compress.checks import check_bits
    from compress.cli import CliError
    from compress.export import pack

    if args.bits is not None:
        try:
            check_bits("--bits", args.bits)
        except ValueError as err:
            raise CliError(str(err)) from None
    if not os.path.isfile(args.checkpoint):
        raise CliError(f"checkpoint not found: {args.checkpoint}")
    out = args.output or os.path.splitext(args.checkpoint)[0] + EXTENSION
    progress = not args.quiet and os.path.getsize(args.checkpoint) > BIG_CHECKPOINT
    try:
        summary = pack(args.checkpoint, out, bits=args.bits, granularity=args.granularity,
                       passthrough_dtype="float16" if args.fp16 else "float32", recipe=args.recipe,
                       progress=progress, trust_checkpoint=args.trust_checkpoint, scales16=not args.scales32)
    except (ValueError, TypeError) as err:
        raise CliError(str(err)) from None
    if not args.quiet:
        print(summary)
        print(f"wrote {out}")
    return 0
