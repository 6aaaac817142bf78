"""Exact-count magnitude masks, monotone across calls.

A mask is a bool tensor of the parameter's shape, True = kept. For a target sparsity
``s`` over ``n`` weights exactly ``k = floor(s·n + 0.5)`` weights are pruned: the ``k``
smallest by magnitude, ties broken by flat index (as a stable sort would), so the count never
depends on how many weights share a threshold value. Weights pruned by a previous mask
sort first (score −1), which makes masks monotone: a pruned weight stays pruned, and if a
schedule ever asks for less sparsity the old mask is kept whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from compress.checks import check_choice, check_fraction

SCOPES = ("layer", "global")


def _count(sparsity: float, n: int) -> int:
    return int(sparsity * n + 0.5)  # round half up: deterministic, unlike round()'s ties-to-even


def _scores(w: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    s = w.detach().abs().flatten().to(torch.float32)  # (n,)
    if prev is not None:
        s = s.masked_fill(~prev.to(s.device).flatten(), -1.0)
    return s


def _prune_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask pruning the ``k`` smallest scores, ties by lowest flat index.

    The same set as the first ``k`` of a stable sort, in O(n): every score below the
    k-th smallest value ``v`` is pruned, then the lowest-index entries equal to ``v``
    until the count is exactly ``k``.
    """
    keep = torch.ones_like(scores, dtype=torch.bool)  # (n,)
    if k <= 0:
        return keep
    if k >= scores.numel():
        return ~keep
    v = torch.kthvalue(scores.cpu() if scores.device.type == "mps" else scores, k).values.to(scores.device)
    below = scores < v
    ties = (scores == v).nonzero().flatten()[: k - int(below.sum())]
    keep &= ~below
    keep[ties] = False
    return keep


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "layer",
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks pruning the smallest-magnitude weights to exactly ``sparsity``.

    Args:
        weights: name -> weight tensor.
        sparsity: fraction to prune, in [0, 1).
        scope: "layer" (each tensor at ``sparsity``) or "global" (the union of all
            tensors at ``sparsity``; layers end up uneven).
        previous: name -> previous mask; previously pruned weights stay pruned.

    Returns:
        name -> bool mask (True = kept), on the weight's device.

    Example:
        >>> import torch
        >>> m = magnitude_masks({"w": torch.tensor([0.3, -0.1, 0.2, 0.4])}, 0.5)
        >>> m["w"].tolist()
        [True, False, False, True]
    """
    check_choice("scope", scope, SCOPES)
    sparsity = check_fraction("sparsity", sparsity, below_one=True)
    previous = previous or {}
    scores = {n: _scores(w, previous.get(n)) for n, w in weights.items()}
    pruned_before = {n: int((s < 0).sum()) for n, s in scores.items()}
    if scope == "layer":
        out = {}
        for n, s in scores.items():
            k = max(_count(sparsity, s.numel()), pruned_before[n])
            out[n] = _prune_smallest(s, k).view(weights[n].shape)
        return out
    names = list(scores)
    if not names:
        return {}
    device = scores[names[0]].device
    flat = torch.cat([scores[n].to(device) for n in names])  # (N,)
    k = max(_count(sparsity, flat.numel()), sum(pruned_before.values()))
    keep = _prune_smallest(flat, k)
    out, at = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[at : at + size].view(weights[n].shape).to(weights[n].device)
        at += size
    return out


@torch.no_grad()
def apply_masks_(params: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """Zero the pruned weights in place (``masks`` float 0/1 or bool, same shapes)."""
    if not params:
        return
    masks = [m if m.dtype == p.dtype else m.to(p.dtype) for p, m in zip(params, masks)]
    torch._foreach_mul_([p.data for p in params], masks)


def mask_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of pruned entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((~m).sum()) for m in masks.values()) / total if total else 0.0
