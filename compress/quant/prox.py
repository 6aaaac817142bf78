"""The decoupled pull toward the grid: a proximal step after the optimizer step.

The gradient form (``compress.quant.penalty``) adds λ·(w − snap(w)) to ``.grad``. An
adaptive optimizer then divides every coordinate by its own running gradient size, so
wherever the task gradient is small the added term alone decides the step (about lr in
size, whatever λ) and locks the weight onto its level: the argument that made AdamW
decouple weight decay from the gradient (Loshchilov & Hutter 2019). The decoupled form
moves the weights itself, after the optimizer has stepped on the task gradient alone:

    w ← w − ρ_t · (w − snap(w))  =  (1 − ρ_t) · w + ρ_t · snap(w)

the closed form of the proximal map of (ρ_t / (2(1 − ρ_t))) · ‖w − snap(w)‖² near a
level (ProxQuant, Bai et al. 2019: a prox step toward the grid after each Adam step;
torchao's PARQ anneals its proximal map to a hard snap). ``snap`` includes the clamp to
the top level, so a weight beyond the range is pulled to the edge level it exports as.
At ρ = 1 the step *is* ``snap``; 0 is a level, so a pruned weight stays exactly 0.

Schedule. ρ rises log-linearly from ``rho_min`` at the start of the pull to 1 at the last
optimizer step:

    ρ(p) = 0                                  for p < start
    ρ(p) = rho_min ** (1 − (p − start)/(1 − start))   for start ≤ p ≤ 1

with ``p = step / total_steps`` the fraction of the run done after the step. Why
log-linear: a weight whose Adam step is about lr crosses to the next level only while
ρ·Δ/2 < lr, so the moment it locks depends on lr/Δ, which differs by orders of magnitude
between layers, bit widths and learning-rate schedules. A geometric ramp spends equal
time at every order of magnitude, so each layer meets its own lock point somewhere inside
the window instead of all at once; and ρ reaches exactly 1 at the last step, so the
final weights sit on the grid because training put them there.
"""

from __future__ import annotations

import math

import torch


def rho_at(progress: float, start: float, rho_min: float) -> float:
    """Strength ρ of the prox step after the step that ends at ``progress`` of the run.

    Example:
        >>> rho_at(0.4, 0.5, 1e-4), rho_at(0.5, 0.5, 1e-4), rho_at(0.75, 0.5, 1e-4), rho_at(1.0, 0.5, 1e-4)
        (0.0, 0.0001, 0.01, 1.0)
    """
    if progress < start:
        return 0.0
    if progress >= 1.0:
        return 1.0
    q = (progress - start) / (1.0 - start)
    return float(math.exp((1.0 - q) * math.log(rho_min)))


@torch.no_grad()
def prox_step_(w: torch.Tensor, step: torch.Tensor, inv_step: torch.Tensor, qmax: int, rho: float,
               work: torch.Tensor | None = None) -> torch.Tensor:
    """``w ← (1 − ρ) w + ρ · clamp(round(w/Δ), ±qmax) · Δ`` in place (0 < ρ < 1).

    ``step = Δ`` and ``inv_step = 1/Δ`` in broadcast shape. Rounding here is torch's
    (ties to even); the two rules differ only at exact halfway points, where the pull is
    as good either way. ρ = 1 is ``grid.snap`` itself (ties away from zero): the caller
    uses that for the final snap so that it is bit-identical to export.

    Example:
        >>> w = torch.tensor([0.26, -0.9])
        >>> prox_step_(w, torch.tensor(0.5), torch.tensor(2.0), 1, 0.5)
        tensor([ 0.3800, -0.7000])
    """
    a = work if work is not None else torch.empty_like(w)
    torch.mul(w, inv_step, out=a)
    a.round_().clamp_(-qmax, qmax).mul_(step)  # snap(w)
    return w.lerp_(a, rho)
