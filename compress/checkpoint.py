"""Starting a run from a trained checkpoint: its weights only.

Teams usually compress a model they already have: load a trained fp32 checkpoint, then
fine-tune it for a few epochs with the callbacks. ``load_weights`` takes the weights of
a Lightning checkpoint (or of a saved state dict) and nothing else: no optimizer state,
no learning-rate schedule, no callback state (masks and grids are built anew by the
callbacks from the loaded weights), no epoch counter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load the weights of the checkpoint at ``path`` into ``model``, strictly.

    Args:
        model: the freshly built model of the recipe.
        path: a Lightning checkpoint (``{"state_dict": ...}``) or a saved state dict.

    Returns:
        The loaded state dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file holds no state dict, or its model does not match ``model``
            (the message lists missing, unexpected and mis-shaped parameters).

    Example:
        >>> import tempfile, torch
        >>> m = torch.nn.Linear(2, 2)
        >>> p = tempfile.mktemp(suffix=".ckpt"); torch.save({"state_dict": m.state_dict()}, p)
        >>> sorted(load_weights(torch.nn.Linear(2, 2), p))
        ['bias', 'weight']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"init_from: {path} must hold a Lightning checkpoint or a state dict of tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if sd[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:8]}{' ...' if len(items) > 8 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if items]
        raise ValueError(f"init_from: the checkpoint {path} does not match the recipe's model: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
    return dict(sd)
