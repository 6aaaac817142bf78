"""Per-tensor size accounting of a packed file, and the table ``export``/``inspect`` print.

The entropy bound of a quantized tensor with ``n`` elements at density ``d`` (fraction
nonzero) and ``b``-bit values is ``n * (b*d + H(d))`` bits, ``H`` the binary entropy:
no code for independent zero positions can index them in fewer bits on average
(Shannon 1948), and each nonzero still needs its ``b`` bits.

Example:
    >>> round(bound_bits_per_weight(8, 0.05), 3)
    0.686
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compress.format import layout as L


def entropy(d: float) -> float:
    """Binary entropy ``H(d)`` in bits."""
    if d <= 0.0 or d >= 1.0:
        return 0.0
    return -(d * math.log2(d) + (1 - d) * math.log2(1 - d))


def bound_bits_per_weight(bits: int, d: float) -> float:
    """``b*d + H(d)``: the entropy bound in bits per weight."""
    return bits * d + entropy(d)


@dataclass
class TensorRow:
    """One tensor of a packed file: what it is and what it costs."""

    name: str
    shape: tuple
    kind: str  # "quant" or "raw"
    dtype: str  # stored dtype for raw tensors, state-dict dtype for quantized ones
    bits: int  # 0 for raw
    encoding: str  # "dense" | "bitmask" | "golomb" | "block" | "raw"
    numel: int
    nnz: int
    nbytes: int  # the tensor's data block (scales, index and values)
    scale_count: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.numel if self.kind == "quant" and self.numel else 0.0

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.numel if self.numel else 0.0

    @property
    def bound_bytes(self) -> float:
        if self.kind != "quant":
            return float(self.nbytes)
        return self.numel * bound_bits_per_weight(self.bits, self.nnz / self.numel) / 8.0

    @property
    def int8_bytes(self) -> int:
        return self.numel + 4 * self.scale_count if self.kind == "quant" else self.nbytes


def row(name: str, r: L.Record, nbytes: int) -> TensorRow:
    """A row from a table record (as encoded by the exporter or read by a decoder)."""
    quant = r.kind == L.QUANT
    return TensorRow(name, r.shape, L.KIND_NAMES[r.kind], L.DTYPES[r.dtype if quant else r.store][0],
                     r.bits, L.ENCODING_NAMES[r.encoding] if quant else "raw", r.numel,
                     r.nnz if quant else r.numel, nbytes, r.scale_count)


def format_table(rows: list, file_bytes: int) -> str:
    """The per-tensor table and totals against fp32, dense int8 and the entropy bound."""
    head = f"{'tensor':<40} {'shape':<18} {'bits':>8} {'sparsity':>8} {'encoding':<8} {'bytes':>10} {'b/w':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        bits = str(r.bits) if r.kind == "quant" else r.dtype
        lines.append(f"{r.name[-40:]:<40} {'x'.join(map(str, r.shape)) or '()':<18} {bits:>8} "
                     f"{r.sparsity:>8.1%} {r.encoding:<8} {r.nbytes:>10} {r.bits_per_weight:>7.3f}")
    numel = sum(r.numel for r in rows)
    fp32 = 4 * numel
    int8 = sum(r.int8_bytes for r in rows)
    bound = sum(r.bound_bytes for r in rows)
    bpw = 8.0 * file_bytes / numel if numel else 0.0
    lines.append("-" * len(head))
    lines.append(f"{len(rows)} tensors, {numel} elements; file {file_bytes} bytes = {bpw:.3f} bits/weight (headers included)")
    for label, ref in (("fp32", fp32), ("dense int8 (+ fp32 scales)", int8), ("entropy bound b*d+H(d)", bound)):
        ratio = f"{file_bytes / ref:.3f}x of it" if ref else "n/a"
        lines.append(f"  vs {label:<28} {ref:>14.0f} bytes: file is {ratio}")
    return "\n".join(lines)
