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
measured at the edge level, ``R = 1 − |cos(π·clamp(w)/Δ)| = 0``, so it gets no pull: the
range is the task's to set, and Δ follows it when it is next computed. Export clamps such
a weight to the edge level, which is the error MSE clipping chose to accept. Pulling it
in instead (``λ·(w − clamp(w))``, an earlier design) boxes the weights inside the first
epoch's range: Δ is fixed within an epoch, the pull holds every weight inside
``±qmax·Δ``, and the next Δ, computed from those weights, is no larger. Measured on the
4-bit recipe, the LSTM weights stayed at max|w| ≈ 0.07 through the first epochs while
unregularized training grows them past 0.15 in two epochs and to 1.3–1.6 in fifteen.
"""

from __future__ import annotations

import math

import torch

from compress.quant.grid import broadcast_scale, qmax, snap


def _clip(w: torch.Tensor, s: torch.Tensor, bits: int | None) -> torch.Tensor:
    return w if bits is None else torch.maximum(torch.minimum(w, s * qmax(bits)), s * -qmax(bits))


def penalty(w: torch.Tensor, scale: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """R(w) = Σ (1 − |cos(π w / Δ)|), differentiable (for tests and monitoring).

    With ``bits``, weights beyond the clipping range ``|w| > qmax·Δ`` are measured at the
    edge level, where R is 0 and flat (no pull; see the module docstring):
    ``R = Σ (1 − |cos(π·clamp(w)/Δ)|)``. ``grid_distance`` still reports how far they are.

    Example:
        >>> import torch
        >>> round(float(penalty(torch.tensor([0.0, 0.5, 1.0]), torch.tensor(1.0))), 6)
        1.0
    """
    s = broadcast_scale(scale.to(w.dtype), w)
    return (1.0 - torch.cos(_clip(w, s, bits) * (math.pi / s)).abs()).sum()


def penalty_grad(w: torch.Tensor, scale: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """∂R/∂w in closed form: (π/Δ) · sign(cos(πw/Δ)) · sin(πw/Δ), 0 beyond the range. No graph.

    Example:
        >>> import torch
        >>> penalty_grad(torch.tensor([0.0, 0.25]), torch.tensor(1.0))
        tensor([0.0000, 2.2214])
    """
    w = w.detach()
    s = broadcast_scale(scale.to(w.dtype), w)
    x = _clip(w, s, bits) * (math.pi / s)  # at the edge x = ±π·qmax: sin(x) = 0
    return torch.sin(x) * torch.cos(x).sign() * (math.pi / s)


def scaled_grad_(
    out: torch.Tensor,
    w: torch.Tensor,
    inv_scale: torch.Tensor,
    coef: torch.Tensor,
    limit: torch.Tensor | None = None,
    work: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Add λ(Δ/π)²·∂R/∂w to ``out`` in place, from per-epoch precomputed factors.

    ``inv_scale = 1/Δ`` and ``coef = λ·Δ/π`` (broadcast shapes); ``limit = qmax·Δ`` clamps
    ``w`` to the clipping range first, so weights beyond it get 0. The hot path of the
    callback, so it uses one transcendental instead of two: with ``u = clamp(w)/Δ`` and
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
    wc = w if limit is None else torch.clamp(w, -limit, limit, out=b)
    torch.mul(wc, inv_scale, out=a)  # u = w_c / Δ
    torch.round(a, out=b)
    a.sub_(b).mul_(math.pi).sin_()  # sin(π f)
    return out.addcmul_(a, coef)


def grid_distance(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """|w − snap(w)| / Δ elementwise: distance to the exported grid point in units of Δ.

    It is at most 0.5 inside the clipping range and grows beyond it (clipped weights).
    """
    s = broadcast_scale(scale.to(torch.float32), w)
    w = w.detach().to(torch.float32)
    return (w - snap(w, scale, bits)).abs_().div_(s)


def clipped(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Boolean mask of the weights export clamps: beyond the top level by more than Δ/2."""
    s = broadcast_scale(scale.to(torch.float32), w)
    return w.detach().to(torch.float32).abs() > s * (qmax(bits) + 0.5)
