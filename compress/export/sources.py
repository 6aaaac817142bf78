"""What the exporter accepts, turned into one shape: a state dict plus per-tensor settings.

Sources:

* a Lightning checkpoint (a path, or the loaded dict with ``"state_dict"`` and
  ``"callbacks"``): bits and scales from the ``QuantizationRegularizer`` state, masks
  from the ``GradualSparsifier`` state (ARCHITECTURE.md, "Checkpoint contract");
* an ``nn.Module`` (a LightningModule included) together with its callback objects,
  whose ``state_dict()`` has that same shape;
* a plain state dict with explicit ``bits`` (an int for every floating tensor of rank
  >= 2, or for ``targets``; or a ``{name: bits}`` dict), optional ``scales`` and ``masks``.

Rules: settings come from the checkpoint when it has them; explicit ``bits``/``scales``
/``targets`` are refused beside a regularizer state, and explicit ``masks`` beside a
sparsifier state. A checkpoint with a sparsifier state but no regularizer state (or
none at all) needs explicit ``bits``: its scales are then computed with
``grid.compute_scale`` and the weights snapped to that grid (post-training
quantization), which the file's metadata records as ``"ptq": true``.

Example:
    >>> import torch
    >>> ckpt = {"state_dict": {"w": torch.zeros(2, 2)}, "callbacks": {
    ...     "QuantizationRegularizer{}": {"version": 1, "bits": 4, "granularity": "tensor",
    ...         "clip": "max", "scales": {"w": torch.tensor(1.0)}, "epoch": 3, "weight": 0.1}}}
    >>> read_compression_state(ckpt).bits
    {'w': 4}
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from compress import checkpoint as contract
from compress.checks import check_bits

REGULARIZER, SPARSIFIER = contract.REGULARIZER, contract.SPARSIFIER


@dataclass
class CompressionState:
    """Per-tensor settings read from the callbacks' checkpoint state (keys: parameter FQNs)."""

    bits: dict = field(default_factory=dict)  # fqn -> int in [2, 8]
    scales: dict = field(default_factory=dict)  # fqn -> float32 Tensor, shape () or (C,)
    masks: dict = field(default_factory=dict)  # fqn -> bool Tensor, True = kept
    has_regularizer: bool = False
    has_sparsifier: bool = False


@dataclass
class Resolved:
    """A source resolved to tensors and settings; ``scales[name] is None`` means compute it."""

    state_dict: dict
    bits: dict
    scales: dict
    masks: dict
    ptq: bool  # scales computed here and weights snapped (post-training quantization)


def _check_state(state, key: str, kind: str) -> dict:
    if not isinstance(state, Mapping):
        raise TypeError(f"callbacks[{key!r}] must be a dict, got {type(state).__name__}")
    versions = contract.VERSIONS[kind]
    if state.get("version") not in versions:
        raise ValueError(f"callbacks[{key!r}]['version'] must be one of {versions}, got {state.get('version')!r}")
    for name in contract.EXPORT_KEYS[kind]:
        if name not in state:
            raise ValueError(f"callbacks[{key!r}] must have a {name!r} entry, found keys {sorted(state)}")
    return state


def read_compression_state(checkpoint: Mapping) -> CompressionState:
    """Collect bits, scales and masks from a checkpoint's ``"callbacks"`` entry."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a dict, got {type(checkpoint).__name__}")
    callbacks = checkpoint.get("callbacks") or {}
    if not isinstance(callbacks, Mapping):
        raise TypeError(f"checkpoint['callbacks'] must be a dict, got {type(callbacks).__name__}")
    out = CompressionState()
    for key, state in callbacks.items():
        key = str(key)
        if key.startswith(REGULARIZER):
            if out.has_regularizer:
                raise ValueError(f"checkpoint['callbacks'] has two {REGULARIZER} states; found {key!r}")
            state = _check_state(state, key, REGULARIZER)
            bits = check_bits(f"callbacks[{key!r}]['bits']", state["bits"])
            for name, scale in dict(state["scales"]).items():
                if not isinstance(scale, torch.Tensor):
                    raise TypeError(f"callbacks[{key!r}]['scales'][{name!r}] must be a Tensor, got {type(scale).__name__}")
                out.scales[name] = scale.detach().to("cpu", torch.float32)
                out.bits[name] = bits
            out.has_regularizer = True
        elif key.startswith(SPARSIFIER):
            if out.has_sparsifier:
                raise ValueError(f"checkpoint['callbacks'] has two {SPARSIFIER} states; found {key!r}")
            state = _check_state(state, key, SPARSIFIER)
            for name, mask in dict(state["masks"]).items():
                if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                    raise TypeError(f"callbacks[{key!r}]['masks'][{name!r}] must be a bool Tensor")
                out.masks[name] = mask.detach().cpu()
            out.has_sparsifier = True
    return out


def callback_states(callbacks) -> dict:
    """``{state_key: state_dict()}`` for callback objects (duck-typed on ``state_key``)."""
    states = {}
    for cb in callbacks or ():
        key = getattr(cb, "state_key", None)
        if isinstance(key, str) and key.startswith((REGULARIZER, SPARSIFIER)):
            states[key] = cb.state_dict()
    return states


def load_checkpoint(path, trust_checkpoint: bool = False) -> dict:
    """Load a checkpoint (or a saved state dict) on CPU; only tensors and plain types unless trusted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"checkpoint {path} holds objects beyond tensors and plain types; if you trust it, "
            f"pass trust_checkpoint=True (CLI: --trust-checkpoint): {str(err).splitlines()[0]}"
        ) from None
    plain = isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
    if not plain and not (isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping)):
        raise ValueError(f"{path} must hold a checkpoint (a dict with a 'state_dict' entry) or a state dict "
                         f"of tensors, found {type(ckpt).__name__}")
    return ckpt


def _explicit(state_dict, bits, targets, scales, masks) -> tuple[dict, dict]:
    if bits is None:
        raise ValueError("bits is required for a plain state dict or a checkpoint without a "
                         f"{REGULARIZER} state (CLI: --bits)")
    if isinstance(bits, Mapping):
        if targets is not None:
            raise ValueError("pass either bits as a {name: bits} dict or targets, not both")
        out = {str(k): check_bits(f"bits[{k!r}]", v) for k, v in bits.items()}
    else:
        check_bits("bits", bits)
        if targets is None:  # default: every floating tensor of rank >= 2 (conv, linear, LSTM weights)
            targets = [k for k, v in state_dict.items() if v.is_floating_point() and v.dim() >= 2]
        out = {str(k): bits for k in targets}
    scales = {k: v.detach().to("cpu", torch.float32) for k, v in dict(scales or {}).items()}
    for k in scales:
        if k not in out:
            raise ValueError(f"scales[{k!r}] is given but {k!r} is not a quantized tensor (bits/targets)")
    return out, {k: scales.get(k) for k in out}


def resolve(source, *, callbacks=None, bits=None, targets=None, scales=None, masks=None,
            trust_checkpoint: bool = False) -> Resolved:
    """Turn any accepted source into a ``Resolved`` (see the module docstring for the rules)."""
    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source, trust_checkpoint)
    if isinstance(source, torch.nn.Module):
        ckpt = {"state_dict": source.state_dict(), "callbacks": callback_states(callbacks)}
    elif isinstance(source, Mapping) and isinstance(source.get("state_dict"), Mapping):
        ckpt = source
    elif isinstance(source, Mapping):
        ckpt = None
    else:
        raise TypeError(f"source must be a checkpoint path, a checkpoint dict, an nn.Module or a state dict, "
                        f"got {type(source).__name__}")
    if callbacks is not None and not isinstance(source, torch.nn.Module):
        raise ValueError("callbacks are only used with an nn.Module source")
    state_dict = dict(ckpt["state_dict"] if ckpt is not None else source)
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state dict entry {k!r} must be a Tensor, got {type(v).__name__}")
    state = read_compression_state(ckpt) if ckpt is not None else CompressionState()
    if state.has_regularizer:
        if bits is not None or scales is not None or targets is not None:
            raise ValueError(f"the source has a {REGULARIZER} state; bits, scales and targets come from it")
        qbits, qscales = dict(state.bits), dict(state.scales)
    else:
        qbits, qscales = _explicit(state_dict, bits, targets, scales, masks)
    if state.has_sparsifier and masks is not None:
        raise ValueError(f"the source has a {SPARSIFIER} state; masks come from it")
    qmasks = dict(state.masks) if state.has_sparsifier else dict(masks or {})
    for what, table in (("bits", qbits), ("scales", qscales), ("masks", qmasks)):
        for name in table:
            if name not in state_dict:
                raise ValueError(f"{what} names tensor {name!r}, which is not in the state dict")
    return Resolved(state_dict, qbits, qscales, qmasks, ptq=any(s is None for s in qscales.values()))
