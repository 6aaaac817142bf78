"""``compress verify FILE CKPT``: the decoded weights equal the checkpoint's quantized weights.

Exit code 0 when every tensor matches bit for bit, 1 otherwise.

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


def expected(name: str, w, rec: dict, res, granularity: str):
    """What FILE should hold for ``name``: the quantized weight, or the passthrough tensor."""
    import torch

    from compress.format import layout as L
    from compress.quant import grid

    if rec["kind"] == L.RAW:
        return w.to(getattr(torch, L.DTYPES[rec["store"]][0])).to(w.dtype)
    bits = res.bits.get(name, rec["bits"])
    s = res.scales.get(name)
    if s is None:
        s = grid.compute_scale(w, bits, granularity)
    return grid.dequantize(grid.quantize(w, s, bits), s).to(w.dtype)


def run(args: argparse.Namespace) -> int:
    import torch

    from compress.cli import CliError
    from compress.decoder.fast import decode, read_file
    from compress.export.sources import resolve

    pf = read_file(args.file)
    try:
        res = resolve(args.checkpoint, bits=args.bits, trust_checkpoint=args.trust_checkpoint)
    except (ValueError, TypeError) as err:
        raise CliError(str(err)) from None
    bad = []
    names = {r["name"] for r in pf.records}
    bad += [f"{n}: in CKPT, missing from FILE" for n in res.state_dict if n not in names]
    for r in pf.records:
        name = r["name"]
        if name not in res.state_dict:
            bad.append(f"{name}: in FILE, missing from CKPT")
            continue
        got, _ = decode(pf, r)
        w = res.state_dict[name].detach().cpu()
        if (r["kind"] == 1) != (name in res.bits and w.numel() > 0):  # empty tensors pass through
            bad.append(f"{name}: quantized in one and not the other")
            continue
        want = expected(name, w, r, res, args.granularity)
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            bad.append(f"{name}: decoded values differ (dtype {got.dtype}/{want.dtype}, shape "
                       f"{tuple(got.shape)}/{tuple(want.shape)})")
    for line in bad:
        print(f"MISMATCH {line}")
    print(f"{'FAIL' if bad else 'OK'}: {len(pf.records)} tensors in {args.file}, {len(bad)} mismatches")
    return 1 if bad else 0
