"""The symmetric, mid-tread quantization grid: the one definition used everywhere.

Levels are ``k * scale`` for integers ``|k| <= qmax(bits) = 2**(bits-1) - 1``; the zero
point is 0, so 0.0 is always a grid point and an omitted (pruned) weight decodes to
exactly 0.0. ``scale`` (the grid step, Δ) is either one value per tensor (shape ``()``)
or one value per output channel (shape ``(C,)``, along axis 0).

The regularizer trains toward this grid, the exporter writes its integers, and every
decoder rebuilds ``q * scale`` in float32. Keeping one implementation is what makes
"what is trained is what is shipped" true bit for bit.
"""

from __future__ import annotations

import torch

from compress import checks
from compress.checks import MAX_BITS, MIN_BITS  # noqa: F401  (re-exported: the grid's range)

GRANULARITIES = ("channel", "tensor")
CLIPS = ("max", "mse")


def check_bits(bits: int, name: str = "bits") -> int:
    """Validate a bit width (2..8 inclusive) and return it (``compress.checks.check_bits``)."""
    return checks.check_bits(name, bits)


def qmax(bits: int) -> int:
    """Largest level index: 127 for 8 bits, 7 for 4 bits, 1 for 2 bits."""
    return 2 ** (check_bits(bits) - 1) - 1


def broadcast_scale(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """View a per-tensor ``()`` or per-channel ``(C,)`` scale so it broadcasts over ``w``."""
    if scale.dim() == 0 or w.dim() == 0:
        return scale
    if scale.dim() != 1 or scale.numel() != w.shape[0]:
        raise ValueError(
            f"scale must have shape () or ({w.shape[0]},) for a weight of shape {tuple(w.shape)}, "
            f"got {tuple(scale.shape)}"
        )
    return scale.view(-1, *([1] * (w.dim() - 1)))


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero (as C's ``lround``; torch.round ties to even).

    ``floor(|x| + 0.5)`` would be wrong for the float just below 0.5 (0.49999997f + 0.5
    rounds up to 1.0 in float32); the fractional part ``|x| − floor(|x|)`` is exact, so
    comparing it with 0.5 is not.
    """
    a = torch.abs(x)
    f = torch.floor(a)
    return torch.sign(x) * (f + (a - f >= 0.5).to(x.dtype))


def quantize(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer levels of ``w`` on the grid, as int8 (values in [-qmax, qmax])."""
    m = qmax(bits)
    s = broadcast_scale(scale.to(torch.float32), w)
    q = round_half_away(w.to(torch.float32) / s).clamp_(-m, m)
    return q.to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float32 weights ``q * scale``."""
    return q.to(torch.float32) * broadcast_scale(scale.to(torch.float32), q)


def snap(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``dequantize(quantize(w))``: the nearest grid point, in w's dtype."""
    return dequantize(quantize(w, scale, bits), scale).to(w.dtype)


def _reduce_dims(w: torch.Tensor, granularity: str) -> tuple[int, ...]:
    if granularity == "tensor" or w.dim() <= 1:
        return tuple(range(w.dim()))
    if granularity == "channel":
        return tuple(range(1, w.dim()))
    checks.fail("granularity", checks.describe_choices(GRANULARITIES), granularity)


def max_scale(w: torch.Tensor, bits: int, granularity: str = "channel") -> torch.Tensor:
    """Δ = max|w| / qmax per channel (or tensor). An all-zero channel gets Δ = 1.0."""
    w = w.detach().to(torch.float32)
    dims = _reduce_dims(w, granularity)
    amax = w.abs().amax(dim=dims) if w.numel() else torch.zeros(())
    if granularity == "tensor" or w.dim() <= 1:
        amax = amax.reshape(())
    scale = amax / qmax(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def mse_scale(
    w: torch.Tensor, bits: int, granularity: str = "channel", grid_points: int = 64, min_ratio: float = 0.2
) -> torch.Tensor:
    """MSE-optimal clipping: the Δ that minimizes Σ (w - snap(w, Δ))² over a search.

    For few bits a max-based Δ spends levels on rare outliers; clipping them trades a
    large error on a few weights for a smaller step on all the others (the criterion of
    Lloyd-Max quantization, restricted to a uniform grid). Candidates are
    ``max_scale * r`` for ``r`` in ``[min_ratio, 1]``; zeros (pruned weights) are
    excluded from the error because they stay exact at any Δ.
    """
    w = w.detach().to(torch.float32)
    base = max_scale(w, bits, granularity)
    dims = _reduce_dims(w, granularity)
    nonzero = w != 0
    best_err, best = None, base
    for r in torch.linspace(min_ratio, 1.0, grid_points):
        s = base * r
        err = ((w - snap(w, s, bits)) ** 2 * nonzero).sum(dim=dims) if w.numel() else torch.zeros(())
        err = err.reshape(base.shape)
        if best_err is None:
            best_err, best = err, s
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, s, best)
    # An all-zero channel has zero error at every candidate; keep the contract's Δ = 1.0.
    empty = (nonzero.sum(dim=dims) == 0).reshape(base.shape) if w.numel() else torch.ones((), dtype=torch.bool)
    return torch.where(empty, torch.ones_like(best), best)


MSE_CLIP_MAX_BITS = 4  # at or below this bit width the default clipping rule is "mse"


def default_clip(bits: int) -> str:
    """The one post-training clipping rule: "mse" at <= 4 bits, else "max".

    With few levels a max-based Δ spends them on rare outliers, and MSE clipping lowers
    the rounding error of every other weight; from 5 bits on the levels are dense enough
    that clipping outliers costs more than it saves. The regularizer, the fake-quant
    baseline, ``compress export --bits``, ``compress verify`` and the benchmark's PTQ rows
    all take their rule from here (``compute_scale(..., clip=None)``).
    """
    return "mse" if check_bits(bits) <= MSE_CLIP_MAX_BITS else "max"


def round_up_bf16(scale: torch.Tensor) -> torch.Tensor:
    """The smallest bfloat16 value >= each positive finite float32 ``scale``, as float32.

    A packed file stores a tensor's scales in 16 bits when every one of them is exactly a
    bfloat16 (FORMAT.md, "16-bit scales"), which halves their bytes. Rounding *up* keeps
    max clipping exact (``max|w| / Δ <= qmax`` still holds) and makes the step at most
    2**-7 (0.8%) coarser, about 1.6% more rounding error in the worst case.

    Example:
        >>> round_up_bf16(torch.tensor([1.0, 1.001, 0.1])).tolist()
        [1.0, 1.0078125, 0.10009765625]
    """
    bits = scale.detach().to(torch.float32).contiguous().view(torch.int32)
    low = bits & 0xFFFF
    up = torch.where(low != 0, (bits & ~0xFFFF) + 0x10000, bits)  # positive: rounds away from 0
    return up.view(torch.float32)


def compute_scale(w: torch.Tensor, bits: int, granularity: str = "channel", clip: str | None = None) -> torch.Tensor:
    """Grid step for ``w``: ``clip="max"`` (no clipping), ``"mse"`` (MSE-optimal clipping),
    or None for ``default_clip(bits)``; rounded up to a bfloat16 value (``round_up_bf16``),
    so that the grid the callbacks train on is exactly the one a 16-bit scale stores."""
    check_bits(bits)
    clip = default_clip(bits) if clip is None else clip
    if clip == "max":
        return round_up_bf16(max_scale(w, bits, granularity))
    if clip == "mse":
        return round_up_bf16(mse_scale(w, bits, granularity))
    checks.fail("clip", checks.describe_choices(CLIPS, optional=True), clip)
