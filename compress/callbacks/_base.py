"""Helpers shared by the two callbacks: targets, trainer position, broadcast, logging.

Nothing here depends on which Lightning package (``pytorch_lightning`` or
``lightning.pytorch``) the Trainer comes from: only duck-typed trainer attributes are used,
so the same callback bodies serve both (see ``compress.lightning``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress.checks import check_str
from compress.targets import Target, compile_patterns, find_targets

_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def check_targets_arg(targets, include, exclude) -> None:
    """Validate the ``targets``/``include``/``exclude`` arguments early, in ``__init__``."""
    if targets is not None and (
        isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets)
    ):
        raise TypeError(f"targets must be None or a list of parameter names, got {targets!r}")
    compile_patterns("include", include)
    compile_patterns("exclude", exclude)


def resolve_targets(pl_module, targets: Sequence[str] | None, include, exclude) -> list[Target]:
    """Default targets (``compress.targets``), or exactly the named parameters."""
    if targets is None:
        return find_targets(pl_module, include, exclude)
    params = dict(pl_module.named_parameters())
    missing = [t for t in targets if t not in params]
    if missing:
        raise ValueError(f"targets names {missing} are not parameters of the module; it has {list(params)[:50]}")
    return [Target(t, params[t], "named") for t in dict.fromkeys(targets)]


def check_strategy(trainer, owner: str) -> None:
    """Refuse sharded strategies: masks and Δ need each full weight on every rank."""
    name = type(getattr(trainer, "strategy", None)).__name__
    if name in _SHARDED:
        raise ValueError(
            f"{owner} needs full (unsharded) weights on every rank; strategy {name} shards them. "
            "Use strategy='ddp' (any number of devices and nodes) instead."
        )


def last_epoch(trainer) -> int | None:
    """The last epoch index of this fit (``max_epochs − 1``), or None when unbounded."""
    max_epochs = getattr(trainer, "max_epochs", None)
    return None if max_epochs is None or max_epochs < 0 else max_epochs - 1


def is_final_batch(trainer) -> bool:
    """True when the batch that just ended is the last training batch of the fit."""
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps:
        return True
    end = last_epoch(trainer)
    return bool(trainer.is_last_batch) and end is not None and trainer.current_epoch >= end


def broadcast(trainer, obj):
    """Rank 0's ``obj`` on every rank (a no-op on one process)."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None or getattr(trainer, "world_size", 1) <= 1:
        return obj
    return strategy.broadcast(obj, src=0)


def to_cpu_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies: what goes in a checkpoint never aliases live training tensors."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def state_key(owner, **kwargs) -> str:
    """``ClassName{...}``, as Lightning's ``Callback._generate_state_key`` formats it."""
    return f"{type(owner).__qualname__}{repr(kwargs)}"


def check_prefix(value) -> str:
    """Validate a ``log_prefix`` argument."""
    return check_str("log_prefix", value)


def log_metrics(trainer, pl_module, metrics: dict[str, float], prog_bar: str | None = None) -> None:
    """Log epoch-level figures from rank zero (values are identical on every rank)."""
    if not trainer.is_global_zero:
        return
    for key, value in metrics.items():
        pl_module.log(key, float(value), on_step=False, on_epoch=True, prog_bar=key == prog_bar, rank_zero_only=True)


def log_histograms(trainer, weights: dict[str, torch.Tensor], prefix: str, limit: int = 3) -> None:
    """Weight histograms of a few layers when the logger is TensorBoard (no import needed)."""
    if not trainer.is_global_zero:
        return
    for logger in getattr(trainer, "loggers", []) or []:
        if type(logger).__name__ != "TensorBoardLogger":
            continue
        writer = logger.experiment  # a SummaryWriter, created by the logger itself
        for name, w in list(weights.items())[:limit]:
            writer.add_histogram(f"{prefix}/{name}", w.detach().float().cpu(), trainer.current_epoch)
