"""Which parameters are compressed: weight matrices of the layers speech models are made of.

Defaults (by module type, the weight only; biases, norms and embeddings are left alone):

- ``nn.Linear`` (and subclasses, such as the out-projection of ``nn.MultiheadAttention``)
  and ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d``: ``weight``;
- ``nn.LSTM``/``nn.GRU``/``nn.RNN``: every ``weight_ih_l*``, ``weight_hh_l*`` and
  ``weight_hr_l*`` (LSTM projections), ``_reverse`` directions included;
- ``nn.MultiheadAttention``: ``in_proj_weight`` or ``q_proj_weight``/``k_proj_weight``/
  ``v_proj_weight`` when the key/value dimensions differ.

``include`` and ``exclude`` are regular expressions matched (``re.search``) against the
fully qualified parameter name, as in ``model.named_parameters()``. ``include`` adds any
matching parameter, ``exclude`` removes matching ones; ``exclude`` wins. A parameter
shared by several modules (tied weights) appears once, under its first name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from compress.checks import fail

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RNN = (nn.LSTM, nn.GRU, nn.RNN)
_RNN_WEIGHT = re.compile(r"^weight_(ih|hh|hr)_l\d+(_reverse)?$")


class Target(NamedTuple):
    """One compressed parameter: fully qualified name, the parameter, and its layer kind."""

    name: str
    param: nn.Parameter
    kind: str


def _default_params(module: nn.Module) -> list[tuple[str, str]]:
    """(local parameter name, kind) pairs a module contributes by default."""
    if isinstance(module, nn.Linear):
        return [("weight", "linear")]
    if isinstance(module, _CONV):
        return [("weight", type(module).__name__.lower())]
    if isinstance(module, _RNN):
        kind = type(module).__name__.lower()
        return [(n, kind) for n, _ in module.named_parameters(recurse=False) if _RNN_WEIGHT.match(n)]
    if isinstance(module, nn.MultiheadAttention):
        names = ["in_proj_weight"] if module.in_proj_weight is not None else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        return [(n, "attention") for n in names]
    return []


def compile_patterns(name: str, value) -> list[re.Pattern]:
    """``include``/``exclude``: None, a regex string or a list of them, compiled."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        fail(name, "None, a regex string or a list of regex strings", value, TypeError)
    out = []
    for v in value:
        try:
            out.append(re.compile(v))
        except re.error as err:
            raise ValueError(f"{name} pattern {v!r} is not a valid regular expression: {err}") from None
    return out


def find_targets(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[Target]:
    """Return the parameters to compress, in ``model.named_parameters()`` order.

    Args:
        model: any ``nn.Module`` (a LightningModule included).
        include: regex(es) on the fully qualified name; matching parameters are added.
        exclude: regex(es); matching parameters are removed (applied after ``include``).

    Returns:
        A list of ``Target(name, param, kind)``.

    Raises:
        ValueError: when nothing is targeted; the message lists the parameters and module
            types found, so the right ``include`` pattern is easy to write.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> [t.name for t in find_targets(m)]
        ['0.weight', '2.weight']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inc, exc = compile_patterns("include", include), compile_patterns("exclude", exclude)
    canonical = {id(p): n for n, p in model.named_parameters()}  # first name of each tensor
    kinds: dict[int, str] = {}
    for _, module in model.named_modules():
        for local, kind in _default_params(module):
            p = getattr(module, local, None)
            if isinstance(p, torch.Tensor) and id(p) in canonical:
                kinds.setdefault(id(p), kind)
    out = []
    for name, p in model.named_parameters():
        kind = kinds.get(id(p))
        if kind is None and any(r.search(name) for r in inc):
            kind = "other"
        if kind is None or any(r.search(name) for r in exc):
            continue
        out.append(Target(name, p, kind))
    if not out:
        params = [n for n, _ in model.named_parameters()]
        types = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(
            "no parameter to compress: expected weights of nn.Linear, nn.Conv1d/2d/3d, nn.LSTM/GRU/RNN or "
            f"nn.MultiheadAttention, or names matching include={include!r} (minus exclude={exclude!r}); "
            f"found parameters {params[:50]}{' ...' if len(params) > 50 else ''} in modules of types {types}"
        )
    return out


def describe_targets(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    print_fn=print,
) -> list[dict]:
    """Print and return what will be compressed: one dict per target.

    Example:
        >>> from torch import nn
        >>> rows = describe_targets(nn.LSTM(8, 16), print_fn=lambda s: None)
        >>> [(r["name"], r["shape"], r["kind"]) for r in rows][:1]
        [('weight_ih_l0', (64, 8), 'lstm')]
    """
    rows = [
        {"name": t.name, "shape": tuple(t.param.shape), "kind": t.kind, "numel": t.param.numel()}
        for t in find_targets(model, include, exclude)
    ]
    if print_fn is not None:
        width = max(len(r["name"]) for r in rows)
        print_fn(f"{'parameter':<{width}}  {'kind':<10} {'numel':>10}  shape")
        for r in rows:
            print_fn(f"{r['name']:<{width}}  {r['kind']:<10} {r['numel']:>10}  {r['shape']}")
        print_fn(f"{len(rows)} tensors, {sum(r['numel'] for r in rows)} weights")
    return rows
