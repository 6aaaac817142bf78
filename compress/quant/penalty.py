"""The absolute-cosine quantization penalty and its closed-form gradient.

For a weight ``w`` and grid step Δ (see ``compress.quant.grid``):

    R(w) = Σ_i (1 − |cos(π w_i / Δ_i)|)

R is exactly 0 on every grid point ``kΔ`` and largest (1 per weight) halfway between two
points. Its derivative, wherever ``cos ≠ 0``, is

    ∂R/∂w_i = (π / Δ_i) · sign(cos(π w_i / Δ_i)) · sin(π w_i / Δ_i)

(the periodic-regularizer family of Naumov et al., 2018, "On periodic functions as
regularizers for quantization of neural networks"; the absolute cosine gives period Δ).
At the halfway points ``sign(0) = 0`` picks the zero subgradient, which is also what
autograd returns for ``abs`` at 0.

Scale-free form (used by the regularizer callback). The raw gradient grows like π/Δ, so
the callback applies the gradient of ``(Δ/π)² · R``:

    g_i = (Δ_i / π) · sign(cos(π w_i / Δ_i)) · sin(π w_i / Δ_i)  ≈  w_i − snap(w_i)

(near a grid point, since ``1 − |cos x| ≈ x²/2``). It is bounded by Δ/π and is the
residual to the nearest grid point in weight units, so an SGD step moves each weight a
fixed *fraction of its distance to the grid*, whatever the bit width, the layer's range
or its size; the value is reported as a per-weight mean of ``1 − |cos|`` (in [0, 1]).

Beyond the clipping range. With ``bits``, a weight beyond the top level ``|w| > qmax·Δ``
(MSE clipping leaves some there; any weight can grow past a Δ fixed for the epoch) is
clamped by export. Two choices, ``pull_clipped``:

* True (the default): it is pulled to the edge level, ``R += (π²/(2Δ²))·(w − clamp(w))²``
  (the quadratic continues the cosine's curvature at a level, so R stays C¹), i.e. a
  scaled gradient ``λ·(w − clamp(w))``. This holds the range near the first epoch's: Δ is
  fixed within an epoch and the next Δ, computed from held weights, is no larger: a
  max-norm constraint on the weights (its measured effect per bit width is in
  docs/callbacks.md).
* False: it is measured at the edge level, where R is 0 and flat: no pull, the task sets
  the range and Δ follows it at the next epoch.
"""

from __future__ import annotations

import math

import torch

from compress.quant.grid import broadcast_scale, qmax, snap


def _clip(w: torch.Tensor, s: torch.Tensor, bits: int | None) -> torch.Tensor:
    return w if bits is None else torch.maximum(torch.minimum(w, s * qmax(bits)), s * -qmax(bits))


def penalty(w: torch.Tensor, scale: torch.Tensor, bits: int | None = None, pull_clipped: bool = True) -> torch.Tensor:
    """R(w) = Σ (1 − |cos(π w / Δ)|), differentiable (for tests and monitoring).

    With ``bits``, weights beyond the clipping range ``|w| > qmax·Δ`` are measured to the
    edge level: ``R = Σ (1 − |cos(π w_c/Δ)|) + Σ (π²/(2Δ²)) (w − w_c)²`` with
    ``w_c = clamp(w)``, the quadratic only with ``pull_clipped`` (see the module docstring).

    Example:
        >>> import torch
        >>> round(float(penalty(torch.tensor([0.0, 0.5, 1.0]), torch.tensor(1.0))), 6)
        1.0
    """
    s = broadcast_scale(scale.to(w.dtype), w)
    wc = _clip(w, s, bits)
    r = (1.0 - torch.cos(wc * (math.pi / s)).abs()).sum()
    if bits is not None and pull_clipped:
        r = r + ((w - wc) ** 2 * (math.pi**2 / (2 * s**2))).sum()
    return r


def penalty_grad(w: torch.Tensor, scale: torch.Tensor, bits: int | None = None, pull_clipped: bool = True) -> torch.Tensor:
    """∂R/∂w in closed form: (π/Δ) · sign(cos(πw/Δ)) · sin(πw/Δ) (+ the clip term). No graph.

    Example:
        >>> import torch
        >>> penalty_grad(torch.tensor([0.0, 0.25]), torch.tensor(1.0))
        tensor([0.0000, 2.2214])
    """
    w = w.detach()
    s = broadcast_scale(scale.to(w.dtype), w)
    wc = _clip(w, s, bits)
    x = wc * (math.pi / s)  # at the edge x = ±π·qmax: sin(x) = 0
    g = torch.sin(x) * torch.cos(x).sign() * (math.pi / s)
    return g + (w - wc) * (math.pi**2 / s**2) if pull_clipped else g


def scaled_grad_(
    out: torch.Tensor,
    w: torch.Tensor,
    inv_scale: torch.Tensor,
    coef: torch.Tensor,
    limit: torch.Tensor | None = None,
    lam: float = 0.0,
    work: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Add λ(Δ/π)²·∂R/∂w to ``out`` in place, from per-epoch precomputed factors.

    ``inv_scale = 1/Δ`` and ``coef = λ·Δ/π`` (broadcast shapes); ``limit = qmax·Δ`` clamps
    ``w`` to the clipping range, and ``lam = λ`` adds the clip term ``λ·(w − w_c)``
    (``lam=0``: no pull beyond the range, ``pull_clipped=False``). The hot path of the
    callback, so it uses one transcendental instead of two: with ``u = w_c/Δ`` and
    ``f = u − round(u)`` in [−½, ½], ``sign(cos(πu))·sin(πu) = sin(πf)`` (both are
    ``(−1)^k sin(π(u − k))`` for the nearest integer k). At exact halfway points, a set
    of measure zero, it picks a side where the subgradient convention picks 0.
    ``work`` is two scratch tensors shaped like ``w`` (reused across steps: fresh
    multi-megabyte temporaries cost more than the arithmetic).

    Example:
        >>> import torch
        >>> out = torch.zeros(2)
        >>> scaled_grad_(out, torch.tensor([0.0, 0.25]), torch.tensor(1.0), torch.tensor(1.0))
        tensor([0.0000, 0.7071])
    """
    w = w.detach()
    a, b = work if work is not None else (torch.empty_like(w), torch.empty_like(w))
    wc = w
    if limit is not None:
        wc = torch.clamp(w, -limit, limit, out=b)
        if lam:
            out.add_(w, alpha=lam).sub_(wc, alpha=lam)  # λ (w − w_c), zero inside the range
    torch.mul(wc, inv_scale, out=a)  # u = w_c / Δ
    torch.round(a, out=b)
    a.sub_(b).mul_(math.pi).sin_()  # sin(π f)
    return out.addcmul_(a, coef)


def grid_distance(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """|w − snap(w)| / Δ elementwise: distance to the exported grid point in units of Δ.

    It is at most 0.5 inside the clipping range and grows beyond it: ``> 0.5`` marks exactly
    the weights export clamps (beyond the top level by more than Δ/2).
    """
    s = broadcast_scale(scale.to(torch.float32), w)
    w = w.detach().to(torch.float32)
    return (w - snap(w, scale, bits)).abs_().div_(s)
