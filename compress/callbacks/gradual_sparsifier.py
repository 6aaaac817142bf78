"""``GradualSparsifier``: magnitude pruning on the Zhu & Gupta (2017) schedule, epoch by epoch.

At each epoch start the target sparsity ``s_t = sparsity_at(epoch, ...)`` (see
``compress.sparsity.schedule``) is turned into exact-count, monotone magnitude masks
(``compress.sparsity.masks``), computed on rank 0 and broadcast, so every DDP rank holds
the same masks. The masks are re-applied after every training batch (that is, after the
optimizer step), so momentum, weight decay or Adam's moments cannot revive a pruned
weight between steps; the forward pass always sees exact zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch

from compress import checkpoint as contract
from compress.callbacks import _base
from compress.checks import check_bool, check_choice, check_int
from compress.sparsity.masks import SCOPES, apply_masks_, check_block, magnitude_masks
from compress.sparsity.schedule import Schedule, check_schedule, check_sparsity, sparsity_at


class GradualSparsifierCore:
    """Gradual magnitude pruning to ``final_sparsity``, with exact counts and monotone masks.

    Schedule (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1), epoch-wise:
    ``s_t = s_f + (s_0 − s_f)(1 − (t − t_0)/n)³`` for ``t_0 = start_epoch``,
    ``n = end_epoch − start_epoch``; "linear" or a callable of the progress ``(t − t_0)/n``
    are also accepted. New masks are computed at each epoch start: exactly
    ``round(s_t·n)`` weights per tensor (``scope="layer"``) or over the union of targets
    (``scope="global"``) are pruned, smallest magnitude first, ties by index. Masks never
    shrink, and are re-applied after every optimizer step.

    Args:
        final_sparsity: fraction of targeted weights pruned from ``end_epoch`` on, in [0, 1).
        start_epoch: first epoch that prunes (target ``initial_sparsity`` before it).
        end_epoch: epoch at which the target reaches ``final_sparsity``; None = the
            trainer's last epoch (``max_epochs − 1``), so fitting ends fully pruned.
        schedule: "cubic" (default, Zhu & Gupta), "linear", or ``f(progress) -> fraction``.
        scope: "layer" (every tensor at the target; predictable per-layer cost) or
            "global" (one magnitude ranking across tensors).
        initial_sparsity: ``s_0``, the target at ``start_epoch``.
        targets: exact parameter names; None = ``compress.find_targets`` defaults.
        include, exclude: regexes on parameter names that adjust the defaults.
        log_per_layer: also log each tensor's sparsity.
        block: None (prune single weights), or ``(rows, cols)``: prune whole blocks of each
            weight viewed as (output channels, inputs), e.g. ``(1, 16)`` for 16
            consecutive inputs of one output, the structure block-sparse kernels skip.
            Blocks are ranked by the RMS of their weights; the target is met to within
            one block.
        log_prefix: logged keys are ``{log_prefix}/sparsity`` (progress bar),
            ``/sparsity_target`` and ``/sparsity/{fqn}``; give two instances different ones.

    The state (``state_dict()``) is ``{"version", "masks": {fqn: bool CPU tensor},
    "target_sparsity", "epoch"}`` plus the settings ``final_sparsity``,
    ``initial_sparsity``, ``start_epoch``, ``end_epoch``, ``scope``, ``schedule`` and ``block``
    (``compress.checkpoint``, the contract of ARCHITECTURE.md). Loading a state saved
    with other settings raises a ValueError naming the setting.

    Example:
        >>> import pytorch_lightning as pl
        >>> from compress import GradualSparsifier
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[GradualSparsifier(final_sparsity=0.8)])

    This class holds the logic, independent of the Lightning package; ``GradualSparsifier``
    here and in ``compress.lightning`` add the ``Callback`` base.
    """

    def __init__(
        self,
        final_sparsity: float = 0.5,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        schedule: Schedule = "cubic",
        scope: str = "layer",
        initial_sparsity: float = 0.0,
        targets: Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        log_per_layer: bool = True,
        log_prefix: str = "compress",
        block: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity must be <= final_sparsity ({self.final_sparsity}), got {initial_sparsity}"
            )
        self.start_epoch = check_int("start_epoch", start_epoch, min=0)
        self.end_epoch = check_int("end_epoch", end_epoch, min=start_epoch, min_name="start_epoch", optional=True)
        self.schedule = check_schedule(schedule)
        self.scope = check_choice("scope", scope, SCOPES)
        _base.check_targets_arg(targets, include, exclude)
        self.targets, self.include, self.exclude = targets, include, exclude
        self.log_per_layer = check_bool("log_per_layer", log_per_layer)
        self.log_prefix = _base.check_prefix(log_prefix)
        self.block = check_block(block)
        self._params: dict[str, torch.nn.Parameter] = {}
        self._masks: dict[str, torch.Tensor] | None = None  # live masks, on the weights' device
        self._float_masks: list[torch.Tensor] = []  # same, as 0/1 in the weight dtype, for foreach
        self._epoch = -1  # epoch whose target the masks hold
        self._target = 0.0

    @property
    def state_key(self) -> str:
        return _base.state_key(
            self,
            final_sparsity=self.final_sparsity,
            start_epoch=self.start_epoch,
            end_epoch=self.end_epoch,
            scope=self.scope,
            targets=self.targets,
            include=self.include,
            exclude=self.exclude,
            # Only when set: the keys of states saved before the option stay the same.
            **({"block": list(self.block)} if self.block is not None else {}),
        )

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """name -> bool mask (True = kept), live; empty before the first epoch."""
        return dict(self._masks or {})

    def _end_epoch(self, trainer) -> int:
        if self.end_epoch is not None:
            return self.end_epoch
        end = _base.last_epoch(trainer)
        if end is None:
            raise ValueError("end_epoch must be given when the trainer's max_epochs is unbounded (None or -1)")
        return max(end, self.start_epoch)

    def target_at(self, trainer, epoch: int) -> float:
        """Target sparsity at ``epoch`` under this trainer's schedule."""
        return sparsity_at(
            epoch, self.final_sparsity, self.start_epoch, self._end_epoch(trainer), self.schedule, self.initial_sparsity
        )

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        _base.check_strategy(trainer, type(self).__name__)
        self._end_epoch(trainer)  # fail early on an unbounded trainer
        self._params = {t.name: t.param for t in _base.resolve_targets(pl_module, self.targets, self.include, self.exclude)}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if self._masks is not None and self._epoch == epoch:  # resumed mid-epoch: masks already hold
            self._install(self._masks)
            return
        self._target = self.target_at(trainer, epoch)
        masks = None
        if trainer.is_global_zero:
            weights = {n: p.detach() for n, p in self._params.items()}
            masks = _base.to_cpu_state(magnitude_masks(weights, self._target, self.scope, self._masks,
                                                                   self.block))
        self._install(_base.broadcast(trainer, masks))
        self._epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # After the optimizer step: zero what momentum / weight decay moved.
        apply_masks_(list(self._params.values()), self._float_masks)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self._params:
            return
        zeros = {n: int((p.detach() == 0).sum()) for n, p in self._params.items()}
        total = sum(p.numel() for p in self._params.values())
        metrics = {
            f"{self.log_prefix}/sparsity_target": self._target,
            f"{self.log_prefix}/sparsity": sum(zeros.values()) / total,
        }
        if self.log_per_layer:
            metrics.update({f"{self.log_prefix}/sparsity/{n}": zeros[n] / p.numel() for n, p in self._params.items()})
        _base.log_metrics(trainer, pl_module, metrics, prog_bar=f"{self.log_prefix}/sparsity")

    def _install(self, masks: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self._params if n not in masks]
        if missing:
            raise ValueError(f"saved GradualSparsifier masks lack targets {missing}; found {list(masks)}")
        self._masks = {n: masks[n].to(p.device, torch.bool) for n, p in self._params.items()}
        self._float_masks = [self._masks[n].to(p.dtype) for n, p in self._params.items()]
        apply_masks_(list(self._params.values()), self._float_masks)

    # -- state ---------------------------------------------------------------------------
    def _settings(self) -> dict:
        """The settings saved in the state and checked on load (``contract.SPARSIFIER_SETTINGS``)."""
        values = {
            "final_sparsity": self.final_sparsity,
            "initial_sparsity": self.initial_sparsity,
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
            "scope": self.scope,
            "schedule": self.schedule if isinstance(self.schedule, str) else "callable",
            "block": list(self.block) if self.block is not None else None,
        }
        return {k: values[k] for k in contract.SPARSIFIER_SETTINGS}

    def state_dict(self) -> dict:
        return {
            "version": contract.SPARSIFIER_VERSION,
            "masks": _base.to_cpu_state(self._masks or {}),
            "target_sparsity": float(self._target),
            "epoch": int(self._epoch),
            **self._settings(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        contract.check_version(contract.SPARSIFIER, state_dict)
        contract.check_settings(contract.SPARSIFIER, state_dict, self._settings())
        masks = state_dict["masks"]
        self._masks = {n: m.to(torch.bool) for n, m in masks.items()} if masks else None
        self._target = float(state_dict["target_sparsity"])
        self._epoch = int(state_dict["epoch"])


class GradualSparsifier(GradualSparsifierCore, pl.Callback):
    __doc__ = GradualSparsifierCore.__doc__
