"""Bench section "format": file size against the entropy bound, and load time.

Prints, measured in one run:

* bits per weight of a packed 256x1024 tensor (scales, index, values, headers and
  metadata: the file's real size) at densities 0.5 / 0.25 / 0.1 / 0.05 and 8 / 4 bits,
  against the bound ``b*d + H(d)`` (Shannon 1948), with per-channel and per-tensor
  fp32 scales, each labelled;
* ``compress.load`` on the C path and on the pure-Python path against ``torch.load`` of
  the same model's fp32 state dict (a 2-layer bidirectional LSTM ASR model, ~5.6M
  parameters) at 8 bits/50% and 4 bits/90%, repetitions interleaved after untimed
  warm-up calls, medians reported, one thread; wall time and CPU time
  (``time.process_time``, less sensitive to other processes on a shared machine), and
  the median page faults per call (fresh memory is what makes a load slow or fast);
* the C decoder's own throughput on one core in weights per second (``psqdump --bench``,
  timing loop in C): whole tensors and the streaming row path, each with its checks;
* the reference decoder's throughput in weights per second (for information).

Example:
    >>> from compress.bench.format import run
    >>> out = run(None)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from compress.format.stats import bound_bits_per_weight
from compress.quant import grid

SHAPE = (256, 1024)
DENSITIES = (0.5, 0.25, 0.1, 0.05)
BITS = (8, 4)
REPS = 31  # interleaved timed load pairs (median); the machine may be shared and noisy
WARMUP = 2


def random_levels(shape, density: float, bits: int, gen: torch.Generator) -> torch.Tensor:
    """Levels with exactly ``round(density * numel)`` nonzeros at uniformly random positions."""
    n = shape[0] * shape[1]
    k = round(density * n)
    q = torch.zeros(n, dtype=torch.int8)
    pos = torch.randperm(n, generator=gen)[:k]
    m = grid.qmax(bits)
    mag = torch.randint(1, m + 1, (k,), generator=gen, dtype=torch.int8)
    sign = torch.randint(0, 2, (k,), generator=gen, dtype=torch.int8) * 2 - 1
    q[pos] = mag * sign
    return q.view(shape)


def size_table(tmp: str, gen: torch.Generator) -> list:
    from compress.export import pack

    rows = []
    for bits in BITS:
        for d in DENSITIES:
            q = random_levels(SHAPE, d, bits, gen)
            for gran in ("channel", "tensor"):
                s = torch.rand(SHAPE[0] if gran == "channel" else (), generator=gen) * 0.09 + 0.01
                w = grid.dequantize(q, s)
                path = os.path.join(tmp, "t.psq")
                summary = pack({"w": w}, path, bits=bits, scales={"w": s})
                n = q.numel()
                bpw = 8.0 * os.path.getsize(path) / n
                dd = int((q != 0).sum()) / n
                bound = bound_bits_per_weight(bits, dd)
                rows.append({"bits": bits, "density": d, "scales": gran, "encoding": summary.rows[0].encoding,
                             "bpw": bpw, "bound": bound, "ratio": bpw / bound})
    return rows


def asr_model() -> torch.nn.Module:
    """conv1d front end + 2-layer bidirectional LSTM + linear CTC head (~5.6M parameters)."""

    class ASR(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(80, 256, 5, padding=2)
            self.lstm = torch.nn.LSTM(256, 384, num_layers=2, bidirectional=True, batch_first=True)
            self.head = torch.nn.Linear(768, 40)

    return ASR()


def minor_faults() -> int:
    """Page faults of this process so far (0 where ``resource`` is missing): fresh memory costs
    microseconds per 4 KiB page, and whether malloc hands a loader fresh or reused memory
    depends on what ran before, so the count explains most run-to-run swings in load time."""
    if sys.platform == "win32":
        return 0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def malloc_warmup() -> None:
    """Allocate, touch and free one 30 MB buffer, as any longer-running process has done.

    glibc serves large blocks with mmap and returns freed heap tops to the OS until a freed
    mmap block raises its thresholds; before that, every load faults in fresh pages (microseconds
    per 4 KiB) and the ratio measures the allocator's state rather than the loaders. The page
    faults per call are printed, so any remaining effect shows."""
    buf = torch.empty(30 << 20, dtype=torch.uint8)
    buf.fill_(0)
    del buf


def bench_files(tmp: str, bits: int, sparsity: float) -> tuple:
    """The ASR model's fp32 state dict (``torch.save``) and its packed file at ``bits``/``sparsity``."""
    from compress.export import pack

    model = asr_model()
    sd = model.state_dict()
    targets = [k for k, v in sd.items() if v.dim() >= 2]
    for k in targets:
        w = sd[k] * (torch.rand(sd[k].shape) >= sparsity)
        sd[k] = grid.snap(w, grid.compute_scale(w, bits), bits)
    pt, psq = os.path.join(tmp, f"m{bits}.pt"), os.path.join(tmp, f"m{bits}.psq")
    torch.save(model.state_dict(), pt)
    summary = pack(sd, psq, bits=bits, targets=targets)
    return pt, psq, summary, sum(v.numel() for v in sd.values())


def load_times(tmp: str, reps: int, bits: int, sparsity: float) -> dict:
    """torch.load vs compress.load on the C path vs the pure-Python path, interleaved."""
    import compress
    from compress import native

    pt, psq, summary, params = bench_files(tmp, bits, sparsity)
    def torch_load():
        return torch.load(pt, weights_only=True)

    alts = {"py": lambda: compress.load(psq, native=False)}
    if native.available():
        alts["c"] = lambda: compress.load(psq, native=True)
    # Each loader is timed in its own interleaved pairing with torch.load: three loaders in one
    # rotation churn malloc's free lists, so that each call faults in fresh pages.
    wall, cpu, faults = {}, {}, {}
    for alt, fn in alts.items():
        pair = {f"pt-{alt}": torch_load, alt: fn}
        for _ in range(WARMUP):  # untimed: first calls pay imports, the C build and lazy initialisation
            for f in pair.values():
                f()
        for key in pair:
            wall[key], cpu[key], faults[key] = [], [], []
        for _ in range(reps):  # interleaved, so drift in machine load hits both alike
            for key, f in pair.items():
                f0, t0, c0 = minor_faults(), time.perf_counter(), time.process_time()
                f()
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
                faults[key].append(minor_faults() - f0)
    main = "c" if "c" in alts else "py"  # what compress.load uses by default
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    pt_main = f"pt-{main}"
    out = {"params": params, "bits": bits, "sparsity": sparsity, "native": "c" in alts,
           "torch_load_s": med[pt_main], "compress_load_s": med[main], "ratio": med[main] / med[pt_main],
           "min_ratio": min(wall[main]) / min(wall[pt_main]), "torch_load_cpu_s": cmed[pt_main],
           "compress_load_cpu_s": cmed[main], "cpu_ratio": cmed[main] / cmed[pt_main],
           "python_load_s": med["py"], "python_ratio": med["py"] / med["pt-py"],
           "python_torch_load_s": med["pt-py"],
           "torch_load_faults": statistics.median(faults[pt_main]), "compress_load_faults": statistics.median(faults[main]),
           "python_load_faults": statistics.median(faults["py"]), "pt_bytes": os.path.getsize(pt),
           "psq_bytes": summary.file_bytes}
    if "c" in alts:
        out.update(c_load_s=med["c"], c_ratio=med["c"] / med["pt-c"], c_vs_python=med["c"] / med["py"])
    return out


def c_throughput(tmp: str, bits: int, sparsity: float, reps: int = 21) -> dict | None:
    """The C decoder alone on one core (psqdump --bench: the timing loop is in C, best of
    ``reps``): open, validate, whole-tensor decode (its checks included), and the streaming
    row path (psq_rows_begin's checks included), in weights per second."""
    import subprocess

    from compress import native

    if not native.available():
        return None
    tool = native.build_tool()
    _, psq, _, _ = bench_files(tmp, bits, sparsity)
    text = subprocess.run([tool, "--bench", str(reps), psq], capture_output=True, text=True, check=True).stdout
    words = text.split()
    val = {words[i]: words[i + 1] for i in range(0, len(words) - 1)}
    return {"bits": bits, "sparsity": sparsity, "weights": int(val["weights"]), "open_s": float(val["open_s"]),
            "validate_s": float(val["validate_s"]), "decode_s": float(val["decode_s"]), "rows_s": float(val["rows_s"]),
            "decode_weights_per_s": float(val["decode_weights_per_s"]),
            "rows_weights_per_s": float(val["rows_weights_per_s"])}


def reference_throughput(tmp: str, gen: torch.Generator) -> float:
    from compress.decoder import reference
    from compress.export import pack

    q = random_levels((256, 256), 0.1, 8, gen)
    path = os.path.join(tmp, "r.psq")
    pack({"w": grid.dequantize(q, torch.tensor(0.01))}, path, bits=8, scales={"w": torch.tensor(0.01)})
    buf = open(path, "rb").read()
    t0 = time.perf_counter()
    reference.decode_file(buf)
    return q.numel() / (time.perf_counter() - t0)


def add_arguments(group) -> None:
    """Options of this section, for the ``python -m compress.bench`` dispatcher."""
    group.add_argument("--format-reps", type=int, default=REPS, help=f"interleaved load repetitions (default {REPS})")


def run(args=None) -> dict:
    """Run the section and print it; returns the figures (see the module docstring)."""
    reps = int(getattr(args, "format_reps", 0) or REPS)
    torch.set_num_threads(int(getattr(args, "threads", 0) or 1))  # 1 unless the dispatcher says otherwise
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = size_table(tmp, gen)
        malloc_warmup()
        loads = [load_times(tmp, reps, 8, 0.5), load_times(tmp, reps, 4, 0.9)]
        c_rates = [c_throughput(tmp, 8, 0.5), c_throughput(tmp, 4, 0.9)]
        ref_wps = reference_throughput(tmp, gen)
    print(f"== format: bits per weight of a packed {SHAPE[0]}x{SHAPE[1]} tensor (file size, headers included)")
    print(f"{'bits':>4} {'density':>7} {'scales':<8} {'encoding':<8} {'b/w':>7} {'bound':>7} {'ratio':>6}  target <= 1.05")
    for r in sizes:
        flag = "" if r["ratio"] <= 1.05 else "  MISS"
        print(f"{r['bits']:>4} {r['density']:>7} {r['scales']:<8} {r['encoding']:<8} {r['bpw']:>7.4f} "
              f"{r['bound']:>7.4f} {r['ratio']:>6.4f}{flag}")
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"== format: load time, torch threads = {torch.get_num_threads()}, median of {reps} runs interleaved with torch.load "
          f"(1-min load average {load_avg:.1f} on {os.cpu_count()} CPUs)")
    for r in loads:
        print(f"{r['params']} params, {r['bits']} bits, sparsity {r['sparsity']}: torch.load(fp32 {r['pt_bytes']} B) "
              f"{r['torch_load_s'] * 1e3:.2f} ms; compress.load({r['psq_bytes']} B) "
              + (f"C path {r['c_load_s'] * 1e3:.2f} ms, ratio {r['c_ratio']:.2f}x"
                 + ("" if r["bits"] != 8 else f" (target <= 1.0x{'' if r['c_ratio'] <= 1.0 else ': MISS'})")
                 + "; " if r["native"] else "C path unavailable; ")
              + f"pure-Python path {r['python_load_s'] * 1e3:.2f} ms, ratio {r['python_ratio']:.2f}x "
              f"(against torch.load {r['python_torch_load_s'] * 1e3:.2f} ms in its own pairing)")
        print(f"    compress.load (default path): fastest-run ratio {r['min_ratio']:.2f}x; CPU time "
              f"{r['torch_load_cpu_s'] * 1e3:.2f} vs {r['compress_load_cpu_s'] * 1e3:.2f} ms, ratio {r['cpu_ratio']:.2f}x; "
              f"page faults per call {r['torch_load_faults']:.0f} vs {r['compress_load_faults']:.0f} "
              f"(pure-Python path {r['python_load_faults']:.0f})")
    print("== format: C decoder alone, one core (psqdump --bench, best of 21; decode includes every check)")
    for r in c_rates:
        if r is None:
            print("C decoder unavailable (no C compiler)")
            continue
        target = "" if r["bits"] != 8 else "; target >= 1 G/s" + ("" if r["decode_weights_per_s"] >= 1e9 else ": MISS")
        print(f"{r['weights']} weights, {r['bits']} bits, sparsity {r['sparsity']}: whole tensors "
              f"{r['decode_weights_per_s'] / 1e9:.2f} G weights/s ({r['decode_s'] * 1e3:.2f} ms{target}), streaming rows {r['rows_weights_per_s'] / 1e9:.2f} G weights/s ({r['rows_s'] * 1e3:.2f} ms); "
              f"of which validation alone {r['validate_s'] * 1e3:.2f} ms")
    print(f"== format: reference decoder {ref_wps:,.0f} weights/s (pure Python, for information)")
    return {"sizes": sizes, "load": loads, "c_decoder": c_rates, "reference_weights_per_s": ref_wps,
            "threads": torch.get_num_threads(), "load_average": load_avg}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Bench the packed format: size vs bound, load time.")
    add_arguments(parser)
    run(parser.parse_args())
