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

from compress.checks import check_choice, check_fraction, fail, is_int

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


def check_block(block) -> tuple[int, int] | None:
    """None, or a (rows, cols) pair of integers >= 1."""
    if block is None:
        return None
    ok = isinstance(block, list | tuple) and len(block) == 2 and all(is_int(b) and b >= 1 for b in block)
    if not ok:
        fail("block", "None or a (rows, cols) pair of integers >= 1", block)
    return (int(block[0]), int(block[1]))


def _block_ids(shape: torch.Size, block: tuple[int, int], device) -> tuple[torch.Tensor, int]:
    """Block index of every weight (flat order) and the number of blocks.

    A weight is viewed as (rows, cols) = (shape[0], the rest flattened): the output
    channel by the input (times the kernel), so a (1, c) block runs along the input
    dimension. Blocks at the right and bottom edges may be partial.
    """
    rows = shape[0] if len(shape) > 1 else 1
    cols = max(int(torch.Size(shape).numel()) // max(rows, 1), 1)
    br, bc = block
    per_row = -(-cols // bc)
    r = torch.arange(rows, device=device)[:, None] // br  # (rows, 1)
    c = torch.arange(cols, device=device)[None, :] // bc  # (1, cols)
    return (r * per_row + c).flatten(), (-(-rows // br)) * per_row


def _block_scores(w: torch.Tensor, prev: torch.Tensor | None, block: tuple[int, int]):
    """Per block: RMS of its weights (−1 once any of it was pruned) and its size."""
    ids, n_blocks = _block_ids(w.shape, block, w.device)
    sq = w.detach().flatten().to(torch.float32) ** 2  # (n,)
    size = torch.zeros(n_blocks, device=w.device).index_add_(0, ids, torch.ones_like(sq))
    # RMS, not the sum: a partial edge block is ranked like a full one.
    score = (torch.zeros(n_blocks, device=w.device).index_add_(0, ids, sq) / size).sqrt()
    if prev is not None:
        hit = torch.zeros(n_blocks, device=w.device).index_add_(0, ids, (~prev.to(w.device).flatten()).float())
        score = score.masked_fill(hit > 0, -1.0)
    return score, size, ids


def _prune_blocks(score: torch.Tensor, size: torch.Tensor, target: int) -> torch.Tensor:
    """Keep-mask over blocks: the lowest scores (ties by index), as many as bring the
    pruned weights closest to ``target`` (within half the largest block), and at least
    every block already pruned."""
    order = torch.sort(score, stable=True).indices  # (nb,)
    pruned = torch.cat([size.new_zeros(1), size[order].cumsum(0)])  # weights pruned by the first k blocks
    k = int((pruned - target).abs().argmin())  # the first minimum: the smaller k on a tie
    k = max(k, int((score < 0).sum()))
    keep = torch.ones_like(score, dtype=torch.bool)
    keep[order[:k]] = False
    return keep


def _block_masks(weights, sparsity, scope, previous, block):
    parts = {n: _block_scores(w, previous.get(n), block) for n, w in weights.items()}
    if scope == "layer":
        return {n: _prune_blocks(sc, sz, _count(sparsity, weights[n].numel()))[ids].view(weights[n].shape)
                for n, (sc, sz, ids) in parts.items()}
    names = list(parts)
    if not names:
        return {}
    device = parts[names[0]][0].device
    score = torch.cat([parts[n][0].to(device) for n in names])
    size = torch.cat([parts[n][1].to(device) for n in names])
    keep = _prune_blocks(score, size, _count(sparsity, sum(w.numel() for w in weights.values())))
    out, at = {}, 0
    for n in names:
        nb = parts[n][0].numel()
        out[n] = keep[at:at + nb].to(weights[n].device)[parts[n][2]].view(weights[n].shape)
        at += nb
    return out


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "layer",
    previous: Mapping[str, torch.Tensor] | None = None,
    block: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks pruning the smallest-magnitude weights to exactly ``sparsity``.

    Args:
        weights: name -> weight tensor.
        sparsity: fraction to prune, in [0, 1).
        scope: "layer" (each tensor at ``sparsity``) or "global" (the union of all
            tensors at ``sparsity``; layers end up uneven).
        previous: name -> previous mask; previously pruned weights stay pruned.
        block: None (single weights), or (rows, cols): prune whole blocks of the weight
            viewed as (output channels, the rest), ranked by the RMS of their weights;
            the count is met to within one block (the block count whose pruned weights
            come closest to ``sparsity``). A block with any previously pruned weight is
            pruned first, so masks stay monotone.

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
    block = check_block(block)
    if block is not None:
        return _block_masks(weights, sparsity, scope, previous, block)
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
