"""The checkpoint contract of the callbacks, and starting a run from a trained checkpoint.

Contract (ARCHITECTURE.md, "Checkpoint contract"): each callback's ``state_dict()`` is
saved under ``checkpoint["callbacks"][state_key]``, the state key starting with the
callback's name. The names, versions and keys below are the one definition; the
callbacks write them and ``compress.export.sources`` reads them.

Starting from a checkpoint. Teams usually compress a model they already have: load a trained fp32 checkpoint, then
fine-tune it for a few epochs with the callbacks. ``load_weights`` takes the weights of
a Lightning checkpoint (or of a saved state dict) and nothing else: no optimizer state,
no learning-rate schedule, no callback state (masks and grids are built anew by the
callbacks from the loaded weights), no epoch counter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

# -- the callbacks' checkpoint contract --------------------------------------------------
REGULARIZER = "QuantizationRegularizer"  # state-key prefix (FakeQuantQAT saves under it too)
SPARSIFIER = "GradualSparsifier"

# QuantizationRegularizer / FakeQuantQAT state. Version 2 stores λ under "lambda" and
# adds "mode"; version 1 (gradient form only, λ under "weight") still loads and exports.
REGULARIZER_VERSION = 2
REGULARIZER_VERSIONS = (1, 2)
REGULARIZER_KEYS = ("version", "bits", "granularity", "clip", "mode", "scales", "epoch", "lambda", "snapped")
REGULARIZER_KEYS_V1 = ("version", "bits", "granularity", "clip", "scales", "epoch", "weight")
REGULARIZER_LATENT = "latent"  # mode="relax" only: the latent float weights, fqn -> Tensor
REGULARIZER_SETTINGS = ("bits", "granularity", "clip", "mode")  # must match the callback on load
LAMBDA_KEY = {1: "weight", 2: "lambda"}  # where λ is stored, by version

# GradualSparsifier state. Settings written from the start of version 1 are "final_sparsity",
# "scope" and "schedule"; "initial_sparsity", "start_epoch" and "end_epoch" were added
# later (still version 1: readers check only the settings a state has).
SPARSIFIER_VERSION = 1
SPARSIFIER_VERSIONS = (1,)
SPARSIFIER_KEYS = ("version", "masks", "target_sparsity", "epoch")
SPARSIFIER_SETTINGS = ("final_sparsity", "initial_sparsity", "start_epoch", "end_epoch", "scope", "schedule",
                       "block")

# What the exporter needs of each state.
EXPORT_KEYS = {REGULARIZER: ("bits", "scales"), SPARSIFIER: ("masks",)}
VERSIONS = {REGULARIZER: REGULARIZER_VERSIONS, SPARSIFIER: SPARSIFIER_VERSIONS}


def check_version(owner: str, state) -> int:
    """The state's version, or a ValueError naming the versions ``owner`` reads."""
    version = state.get("version")
    if version not in VERSIONS[owner]:
        raise ValueError(f"{owner} state version must be one of {VERSIONS[owner]}, got {version!r}")
    return version


def check_settings(owner: str, saved, current: dict) -> None:
    """Refuse a state saved with other settings: names the setting, the saved and the current value.

    Only the settings ``saved`` has are compared (older states have fewer).
    """
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise ValueError(f"{owner} checkpoint was trained with {key}={saved[key]!r}, "
                             f"this callback has {value!r}")


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
