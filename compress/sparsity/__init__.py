"""Sparsity math: the pruning schedule and exact-count magnitude masks (no Lightning)."""

from compress.sparsity.masks import apply_masks_, magnitude_masks, mask_sparsity
from compress.sparsity.schedule import sparsity_at

__all__ = ["apply_masks_", "magnitude_masks", "mask_sparsity", "sparsity_at"]
