"""``compress verify FILE CKPT``: the decoded weights equal the checkpoint's quantized weights.

Exit code 0 when every tensor matches bit for bit, 1 otherwise. The check is
``compress.export.verify``; this module parses, calls and prints.

Example:
    >>> from compress.cli import main
    >>> main(["verify", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse

from compress.cli.export import add_common


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check a .psq file against its checkpoint (exit 0/1)",
        description="Decode every tensor of FILE and compare it bit for bit with CKPT's weights as "
                    "quantized on their grid (dequantize(quantize(w))); unquantized tensors must equal "
                    "CKPT's (after the file's float16 rounding, if it used it). Exit code 0 if all match, 1 if not.")
    p.add_argument("file", metavar="FILE", help="packed file (.psq)")
    p.add_argument("checkpoint", metavar="CKPT", help="the checkpoint (or state dict) it was exported from")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compress.cli import CliError
    from compress.decoder.fast import read_file
    from compress.export import verify

    pf = read_file(args.file)  # read once: its tensor count is printed too
    try:
        bad = verify(pf, args.checkpoint, bits=args.bits, granularity=args.granularity,
                     trust_checkpoint=args.trust_checkpoint)
    except (ValueError, TypeError) as err:
        raise CliError(str(err)) from None
    for mismatch in bad:
        print(f"MISMATCH {mismatch}")
    print(f"{'FAIL' if bad else 'OK'}: {len(pf.records)} tensors in {args.file}, {len(bad)} mismatches")
    return 1 if bad else 0
