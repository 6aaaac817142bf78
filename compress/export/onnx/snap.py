"""Snapping: a copy of the model whose compressed weights lie on their grid.

The exported graph must compute what a packed file decodes to, so the float graph is
traced from this copy (pruned weights exactly 0.0, each compressed weight
``grid.snap(w, scale, bits)``); the int8 rewrite then finds those rows again by value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from compress.quant import grid


def _field(state, name: str, default=None):
    return state.get(name, default) if isinstance(state, Mapping) else getattr(state, name, default)


def compressed_weights(model: torch.nn.Module, state, prefix: str = "") -> dict[str, tuple[str, int, torch.Tensor]]:
    """Resolve a compression state against ``model``'s parameters.

    Args:
        model: the module to export (a whole LightningModule or one of its submodules).
        state: a ``CompressionState``-like object or a mapping with ``bits`` (an int, or
            ``{fqn: int}``), ``scales`` (``{fqn: Tensor (C,) or ()}``), optional ``masks``.
        prefix: what state keys carry in front of ``model``'s parameter names, e.g.
            ``"encoder."`` to export ``module.encoder``; other keys are ignored.

    Returns:
        ``{parameter name in model: (state key, bits, scale)}``.

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> sorted(compressed_weights(lin, {"bits": 8, "scales": {"weight": torch.ones(3)}}))
        ['weight']
    """
    scales, bits = _field(state, "scales"), _field(state, "bits")
    if not isinstance(scales, Mapping):
        raise TypeError(f"state.scales must be a mapping {{fqn: Tensor}}, got {type(scales).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    params, out = dict(model.named_parameters()), {}
    for key, scale in scales.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name not in params:
            raise ValueError(f"state.scales names {key!r}, but the model has no parameter {name!r} "
                             f"(prefix {prefix!r}); is the prefix right?")
        b = bits if isinstance(bits, int) else (bits.get(key) if isinstance(bits, Mapping) else None)
        if b is None:
            raise ValueError(f"state.bits must give a bit width for {key!r}, got {bits!r}")
        grid.check_bits(b, name=f"state.bits[{key!r}]")
        if not isinstance(scale, torch.Tensor):
            raise TypeError(f"state.scales[{key!r}] must be a Tensor, got {type(scale).__name__}")
        scale = scale.detach().to("cpu", torch.float32)
        try:
            grid.broadcast_scale(scale, params[name])
        except ValueError as err:
            raise ValueError(f"state.scales[{key!r}]: {err}") from None
        if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"state.scales[{key!r}] must be finite and > 0")
        out[name] = (key, b, scale)
    return out


def snap_model(model: torch.nn.Module, state, prefix: str = "") -> torch.nn.Module:
    """A copy of ``model`` in eval mode whose compressed weights lie on their grid.

    Masks (if any) are applied first: pruned weights are exactly 0.0, as a packed file
    decodes them.

    Example:
        >>> lin = snap_model(torch.nn.Linear(4, 3), {"bits": 4, "scales": {"weight": torch.full((3,), 0.1)}})
        >>> bool(((lin.weight / 0.1).round() * 0.1 - lin.weight).abs().max() < 1e-6)
        True
    """
    resolved = compressed_weights(model, state, prefix)
    snapped = copy.deepcopy(model).eval()
    params = dict(snapped.named_parameters())
    with torch.no_grad():
        for key, mask in (_field(state, "masks") or {}).items():
            p = params.get(key[len(prefix):]) if key.startswith(prefix) else None
            if p is None:
                continue
            if not isinstance(mask, torch.Tensor) or mask.shape != p.shape:
                found = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"state.masks[{key!r}] must be a bool Tensor of shape {tuple(p.shape)}, got {found}")
            p.mul_(mask.to(p.dtype))
        for name, (_, bits, scale) in resolved.items():
            params[name].copy_(grid.snap(params[name].detach(), scale, bits))
    return snapped
