"""Bench section "kernels": int8 matrix products in C against torch, on one thread.

``y = diag(scale) · Q · x`` (compress/native/kernels.h) on the layer shapes of the
default ``ctc_lstm`` model (recipes/model/ctc_lstm.yaml: conv_channels 192, hidden 192,
2 bidirectional layers, n_mels 80, vocab 29 × upsample 2) and on 1024 × 1024:

* conv1 as im2col (192 × 400), conv2 (192 × 960), the LSTM input projections of layer 0
  (768 × 192) and layer 1 (768 × 384), the recurrent matrix (768 × 192), the head
  (58 × 384) and 1024 × 1024; each at n = 1 and, for the input projections and 1024²,
  batched (48 frames);
* at sparsity 0, 50, 75 and 90 %: unstructured (a magnitude mask of random weights) for
  CSR, block-structured (random 1 × b blocks) for BSR;
* side by side: torch fp32 ``F.linear``, torch's dynamic int8 Linear
  (``torch.ao.nn.quantized.dynamic.Linear``, when it runs here), the C dense int8 kernel
  (and its plain reference), C CSR and C BSR.

Each variant: time per call, GMAC/s of the dense-equivalent work (rows · cols · n
multiply-adds / time) and the bytes of weights a call reads (levels + index + scales).
The C kernels are timed by a loop in C (compress/native/kernels_bench.c, a bench-only
library), so that small shapes carry no ctypes cost; torch by a Python loop. Every figure
is the median of interleaved rounds: each round times every variant once, in an order
rotated by one each round, so drift in the machine's load hits all variants alike.

The targets (BSR against dense int8 C at 50 / 75 / 90 % sparsity; dense int8 C against
torch fp32 at 1024², n = 1) are printed with PASS or MISS.

``--kernels-quick`` runs a tiny shape and three rounds (a few seconds, for CI).

Example:
    >>> from compress.bench.kernels import run
    >>> out = run(None)  # doctest: +SKIP

Standalone: ``python -m compress.bench.kernels [--kernels-quick] [--out DIR]`` (writes
``DIR/kernels.json``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

SHAPES = (  # (name, rows, cols, batched n or 0)
    ("conv1 (im2col)", 192, 400, 0),
    ("conv2 (im2col)", 192, 960, 0),
    ("lstm0 input", 768, 192, 48),
    ("lstm1 input", 768, 384, 48),
    ("lstm recurrent", 768, 192, 0),
    ("head", 58, 384, 0),
    ("1024x1024", 1024, 1024, 48),
)
QUICK_SHAPES = (("tiny", 64, 96, 4), ("1024x1024", 1024, 1024, 0))
SPARSITIES = (0.0, 0.5, 0.75, 0.9)
BLOCK = 8  # BSR block width (1 x BLOCK): the training recipe's (recipes/compression/sparse50_block8_qreg8.yaml)
ROUNDS = 15
QUICK_ROUNDS = 3
TARGET_S = 1e-3  # seconds per timed measurement (calls are repeated to reach it)
# Targets: BSR vs dense C at each sparsity; dense C vs torch fp32 at 1024², n = 1.
BSR_TARGETS = {0.5: 1.5, 0.75: 2.5, 0.9: 4.0}
DENSE_VS_TORCH = 1.0
KINDS = {"dense": 0, "dense_ref": 1, "csr": 2, "csr_ref": 3, "bsr": 4, "bsr_ref": 5}  # kernels_bench.c


def bench_library():
    """The bench-only library (kernels_bench.c + kernels.c, the library's flags), bound."""
    from compress import native
    from compress.native import kernels

    ext = ".dylib" if sys.platform == "darwin" else ".so"
    sources = ("kernels_bench.c", "kernels.c")
    try:
        path = native._compile(native.compiler(), native.CFLAGS, sources, "libpsqkbench-{key}" + ext,
                               native.NATIVE_FLAGS)
    except native.NativeUnavailable:
        path = native._compile(native.compiler(), native.CFLAGS, sources, "libpsqkbench-{key}" + ext)
    lib = kernels.library(ctypes.CDLL(path))
    lib.psq_kernels_bench.restype = ctypes.c_double
    lib.psq_kernels_bench.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32,
                                      ctypes.c_void_p, ctypes.c_uint32]
    return lib


def random_levels(rows: int, cols: int, rng: np.random.Generator) -> tuple:
    """Float weights ~ N(0, 1), their per-row int8 levels (max clip) and scales."""
    w = rng.standard_normal((rows, cols)).astype(np.float32)  # (rows, cols)
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)  # (rows,)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return w, q, scale


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the largest |w|: exactly ``round((1 - sparsity) * numel)`` kept, at random positions
    (the weights are random)."""
    k = round(sparsity * w.size)
    keep = np.ones(w.size, dtype=bool)
    keep[np.argsort(np.abs(w), axis=None, kind="stable")[:k]] = False
    return keep.reshape(w.shape)


def block_mask(rows: int, cols: int, block: int, sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """Random 1 x block blocks: ``round(sparsity * blocks)`` of them zeroed."""
    nb = -(-cols // block)
    keep = np.ones(rows * nb, dtype=bool)
    keep[rng.permutation(rows * nb)[: round(sparsity * rows * nb)]] = False
    return np.repeat(keep.reshape(rows, nb), block, axis=1)[:, :cols]


def torch_variants(w_fp32: np.ndarray, q: np.ndarray, scale: np.ndarray, x: np.ndarray) -> tuple:
    """``{name: (fn, weight bytes)}`` for F.linear fp32 and the dynamic int8 Linear, and why the
    latter is missing (or None)."""
    import torch
    import torch.nn.functional as F

    wt = torch.from_numpy(q.astype(np.float32) * scale[:, None])  # (rows, cols): the same weights
    xt = torch.from_numpy(x)  # (n, cols)
    out = {"torch fp32": (lambda: F.linear(xt, wt), wt.numel() * 4)}
    why = None
    try:
        from torch.ao.nn.quantized.dynamic import Linear

        rows, cols = q.shape
        with warnings.catch_warnings():  # quantized tensors' deprecation notice, once per shape
            warnings.simplefilter("ignore", UserWarning)
            m = Linear(cols, rows, bias_=False, dtype=torch.qint8)
            wq = torch.quantize_per_channel(wt, torch.from_numpy(scale.astype(np.float64)),
                                            torch.zeros(rows, dtype=torch.long), 0, torch.qint8)
            m.set_weight_bias(wq, None)
            with torch.no_grad():
                m(xt)
        out["torch int8 dyn"] = (lambda: m(xt), rows * cols + rows * 4)
    except Exception as err:  # an engine without int8 kernels, a build without quantization
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    del w_fp32
    return out, why


def time_torch(fn, reps: int) -> float:
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps


def case_variants(lib, rows: int, cols: int, n: int, block: int, rng: np.random.Generator) -> tuple:
    """Every variant of one shape: a list of dicts with a ``time(reps)`` callable."""
    from compress.native import kernels

    w, q, scale = random_levels(rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)  # (n, cols)
    y = np.empty((n, rows), dtype=np.float32)  # (n, rows)
    variants = []

    def c_variant(name, storage, mat, kind, sparsity, structure, stored):
        def timed(reps, mat=mat, kind=kind):
            return lib.psq_kernels_bench(KINDS[kind], ctypes.byref(mat.struct), x.ctypes.data, n, y.ctypes.data, reps)

        variants.append({"name": name, "storage": storage, "sparsity": sparsity, "structure": structure,
                         "weight_bytes": mat.weight_bytes(), "stored": stored, "time": timed, "keep": mat})

    torch_fns, why = torch_variants(w, q, scale, x)
    for name, (fn, nbytes) in torch_fns.items():
        variants.append({"name": name, "storage": "torch", "sparsity": 0.0, "structure": "dense",
                         "weight_bytes": nbytes, "stored": rows * cols,
                         "time": (lambda reps, fn=fn: time_torch(fn, reps))})
    dense = kernels.dense(q, scale, lib=lib)
    c_variant("C dense", "dense", dense, "dense", 0.0, "dense", rows * cols)
    c_variant("C dense ref", "dense", dense, "dense_ref", 0.0, "dense", rows * cols)
    for s in SPARSITIES:
        qu = np.where(magnitude_mask(w, s), q, 0).astype(np.int8)
        m = kernels.csr(qu, scale, lib=lib)
        c_variant(f"C CSR {s:.0%}", "csr", m, "csr", s, "unstructured", m.nnz)
    for s in SPARSITIES:
        qb = np.where(block_mask(rows, cols, block, s, rng), q, 0).astype(np.int8)
        m = kernels.bsr(qb, scale, block, lib=lib)
        c_variant(f"C BSR{block} {s:.0%}", "bsr", m, "bsr", s, f"block 1x{block}", m.blocks)
    return variants, why


def measure(variants: list, rounds: int, target_s: float) -> None:
    """Median seconds per call of each variant into ``v["seconds"]``: interleaved rounds."""
    for v in variants:  # warm-up, and the repetitions that reach target_s per measurement
        v["time"](1)
        one = max(v["time"](3), 1e-9)
        v["reps"] = max(1, min(100000, int(target_s / one)))
        v["samples"] = []
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotated each round
        for v in order:
            v["samples"].append(v["time"](v["reps"]))
    for v in variants:
        v["seconds"] = statistics.median(v["samples"])


def targets(cases: list, block: int) -> list:
    """The target ratios on the 1024 x 1024, n = 1 case (else the largest n = 1 case)."""
    one = [c for c in cases if c["n"] == 1]
    if not one:
        return []
    case = next((c for c in one if c["shape"] == "1024x1024"), max(one, key=lambda c: c["rows"] * c["cols"]))
    by = {v["name"]: v["seconds"] for v in case["variants"]}
    out = []
    for s, want in BSR_TARGETS.items():
        name = f"C BSR{block} {s:.0%}"
        ratio = by["C dense"] / by[name]
        out.append({"name": f"BSR 1x{block} vs dense C, {s:.0%} sparse, {case['shape']} n=1", "ratio": ratio,
                    "target": want, "pass": ratio >= want})
    ratio = by["torch fp32"] / by["C dense"]
    out.append({"name": f"dense int8 C vs torch fp32 F.linear, {case['shape']} n=1", "ratio": ratio,
                "target": DENSE_VS_TORCH, "pass": ratio >= DENSE_VS_TORCH})
    return out


def report(result: dict) -> str:
    """The section's Markdown text (tables and the targets)."""
    lines = [f"== kernels: y = diag(scale) Q x, int8 levels, torch threads = {result['threads']}, C on one thread; "
             f"median of {result['rounds']} interleaved rounds; BSR blocks 1x{result['block']}; "
             f"AVX2 + FMA path: {'yes' if result['simd'] else 'no'}"]
    if result["torch_int8"] is not None:
        lines.append(f"torch dynamic int8 Linear unavailable: {result['torch_int8']}")
    for c in result["cases"]:
        lines += ["", f"### {c['shape']}: {c['rows']} x {c['cols']}, n = {c['n']}", "",
                  "| variant | sparsity | structure | stored | us/call | GMAC/s | weight KiB | vs C dense |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        dense = next(v["seconds"] for v in c["variants"] if v["name"] == "C dense")
        for v in c["variants"]:
            lines.append(f"| {v['name']} | {v['sparsity']:.0%} | {v['structure']} | {v['stored']} | "
                         f"{v['seconds'] * 1e6:.2f} | {v['gmacs']:.2f} | {v['weight_bytes'] / 1024:.1f} | "
                         f"{dense / v['seconds']:.2f}x |")
    lines += ["", "Targets:"]
    for t in result["targets"]:
        lines.append(f"- {t['name']}: {t['ratio']:.2f}x (target >= {t['target']}x) {'PASS' if t['pass'] else 'MISS'}")
    return "\n".join(lines)


def add_arguments(group) -> None:
    """Options of this section, for the ``python -m compress.bench`` dispatcher."""
    group.add_argument("--kernels-quick", action="store_true", help="a tiny shape, three rounds (CI)")
    group.add_argument("--kernels-block", type=int, default=BLOCK, help=f"BSR block width (default {BLOCK})")
    group.add_argument("--kernels-rounds", type=int, default=0, help=f"interleaved rounds (default {ROUNDS})")
    group.add_argument("--kernels-shapes", default="",
                       help="comma-separated shape names to run (default: all); e.g. '1024x1024,head'")


def run(args=None) -> dict:
    """Run the section and print its Markdown; returns the figures (see the module docstring)."""
    import torch

    from compress.checks import fail

    quick = bool(getattr(args, "kernels_quick", False))
    block = int(getattr(args, "kernels_block", 0) or BLOCK)
    if not 1 <= block <= 256:
        fail("--kernels-block", "an integer in [1, 256]", block)
    rounds = int(getattr(args, "kernels_rounds", 0) or (QUICK_ROUNDS if quick else ROUNDS))
    torch.set_num_threads(int(getattr(args, "threads", 0) or 1))  # 1 unless the dispatcher says otherwise
    print(f"threads: torch.get_num_threads() = {torch.get_num_threads()}; the C kernels use one")
    shapes = QUICK_SHAPES if quick else SHAPES
    wanted = [s for s in (getattr(args, "kernels_shapes", "") or "").split(",") if s]
    if wanted:
        shapes = tuple(s for s in shapes if s[0] in wanted)
    lib = bench_library()
    rng = np.random.default_rng(0)
    cases, why_int8 = [], None
    for name, rows, cols, batched in shapes:
        for n in (1, batched) if batched else (1,):
            variants, why_int8 = case_variants(lib, rows, cols, n, block, rng)
            measure(variants, rounds, TARGET_S / (5 if quick else 1))
            for v in variants:
                v["gmacs"] = rows * cols * n / v["seconds"] / 1e9
            cases.append({"shape": name, "rows": rows, "cols": cols, "n": n,
                          "variants": [{k: v[k] for k in ("name", "storage", "sparsity", "structure", "stored",
                                                          "weight_bytes", "seconds", "gmacs", "reps")}
                                       for v in variants]})
    result = {"threads": torch.get_num_threads(), "block": block, "rounds": rounds, "quick": quick,
              "simd": bool(lib.psq_kernels_simd()), "torch_int8": why_int8, "cases": cases,
              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    result["targets"] = targets(cases, block)
    print(report(result))
    return result


def main(argv=None) -> int:
    from compress.atomic import write_text

    parser = argparse.ArgumentParser(prog="python -m compress.bench.kernels", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", metavar="DIR", help="write DIR/kernels.json")
    args = parser.parse_args(argv)
    if args.out and not os.path.isdir(args.out):
        parser.error(f"--out must be an existing directory, got {args.out!r}")
    result = run(args)
    if args.out:
        write_text(os.path.join(args.out, "kernels.json"), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
