"""``compress inspect FILE``: per-tensor table of a packed file, with totals against bounds.

Example:
    >>> from compress.cli import main
    >>> main(["inspect", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="show what a .psq file holds",
        description="Print each tensor's shape, bits, sparsity, encoding, bytes and bits per weight, and the "
                    "totals compared to fp32, to dense int8 and to the entropy bound b*d+H(d). The header, "
                    "metadata and table are validated; tensor data is not decoded (use verify).")
    p.add_argument("file", metavar="FILE", help="packed file (.psq)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compress.decoder.fast import read_file
    from compress.format.stats import format_table, row

    pf = read_file(args.file)
    meta = pf.metadata
    print(f"{args.file}: PSQ v{pf.version[0]}.{pf.version[1]}, written by {meta.get('tool', '?')}, "
          f"recipe {meta.get('recipe')}" + (", post-training quantized" if meta.get("ptq") else ""))
    rows = [row(r.name, r, r.data_len) for r in pf.records]
    print(format_table(rows, len(pf.buf)))
    return 0
