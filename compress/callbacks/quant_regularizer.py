"""``QuantizationRegularizer``: pulls weights onto the export grid in the backward pass.

The forward pass is untouched (no fake quantization): after ``backward`` and before the
optimizer step (``on_before_optimizer_step``) the closed-form gradient of the
absolute-cosine penalty is added to each targeted weight's ``.grad``. No autograd graph
is built over the weights, so memory and the task graph are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch

from compress.callbacks import _base
from compress.quant.grid import broadcast_scale, check_bits, compute_scale, qmax, snap
from compress.quant.penalty import grid_distance, penalty, scaled_grad_

# λ default, measured (docs/callbacks.md): a 2-layer LSTM (40→64, 10 classes) trained
# 10 epochs with AdamW (lr 3e-3), then fine-tuned 4 epochs at 4 bits: the mean distance
# to the grid fell from 0.25Δ to 0.04Δ (76% of weights within 0.05Δ, vs 10% with λ = 0)
# for a 13% higher task loss; λ = 0.1 reaches 0.02Δ (92%) for +17%, λ = 0.01 0.08Δ for +8%.
DEFAULT_WEIGHT = 0.03

Weight = float | Callable[[int], float]


def _check_weight(value, name: str = "weight") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (or a callable epoch -> such a number), got {value!r}")
    return float(value)


class QuantizationRegularizerCore:
    """The callback's logic, independent of the Lightning package it is mixed into."""

    def __init__(
        self,
        bits: int = 8,
        weight: Weight = DEFAULT_WEIGHT,
        granularity: str = "channel",
        clip: str | None = None,
        targets: Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        warmup_epochs: int = 0,
        start_epoch: int = 0,
        pull_clipped: bool = True,
        snap_on_fit_end: bool = True,
        log_histograms: bool = True,
        log_prefix: str = "compress",
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        if not callable(weight):
            _check_weight(weight)
        self.weight = weight
        if granularity not in ("channel", "tensor"):
            raise ValueError(f"granularity must be 'channel' or 'tensor', got {granularity!r}")
        self.granularity = granularity
        # Few levels make max-based Δ waste them on outliers: MSE clipping for <= 4 bits.
        self.clip = clip if clip is not None else ("mse" if bits <= 4 else "max")
        if self.clip not in ("max", "mse"):
            raise ValueError(f"clip must be None, 'max' or 'mse', got {clip!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be a non-negative integer, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch must be a non-negative integer, got {start_epoch!r}")
        self.start_epoch = start_epoch
        if not isinstance(pull_clipped, bool):
            raise TypeError(f"pull_clipped must be a bool, got {pull_clipped!r}")
        self.pull_clipped = pull_clipped
        if not isinstance(snap_on_fit_end, bool):
            raise TypeError(f"snap_on_fit_end must be a bool, got {snap_on_fit_end!r}")
        self.snap_on_fit_end = snap_on_fit_end
        _base.check_targets_arg(targets, include, exclude)
        self.targets, self.include, self.exclude = targets, include, exclude
        self.log_histograms = log_histograms
        self.log_prefix = _base.check_prefix(log_prefix)
        self._params: dict[str, torch.nn.Parameter] = {}
        self._scales: dict[str, torch.Tensor] = {}  # fqn -> float32 CPU, () or (C,): the state
        self._inv: dict[str, torch.Tensor] = {}  # fqn -> 1/Δ, broadcast shape, on device
        self._work: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # fqn -> scratch views
        self._coef: dict[str, torch.Tensor] = {}  # fqn -> λ·Δ/π, broadcast shape, on device
        self._limit: dict[str, torch.Tensor] = {}  # fqn -> qmax·Δ, the clipping edge
        self._epoch = -1  # epoch whose start the scales were computed at
        self._lambda = 0.0
        self._snapped = False
        self._opt_params: dict[int, set[int]] = {}
        self._factors_epoch: int | None = None  # epoch the per-step factors were built for

    @property
    def state_key(self) -> str:
        return _base.state_key(
            self, bits=self.bits, granularity=self.granularity, clip=self.clip,
            targets=self.targets, include=self.include, exclude=self.exclude,
        )

    @property
    def scales(self) -> dict[str, torch.Tensor]:
        """fqn -> grid step Δ (float32, CPU), as used this epoch and stored in the state."""
        return dict(self._scales)

    def lambda_at(self, epoch: int) -> float:
        """λ at ``epoch``: 0 before ``start_epoch``, then ``weight`` (or ``weight(epoch)``)
        times the linear warm-up ramp ``min(1, (epoch − start_epoch + 1) / (warmup_epochs + 1))``."""
        if epoch < self.start_epoch:
            return 0.0
        lam = _check_weight(self.weight(epoch) if callable(self.weight) else self.weight, "weight(epoch)")
        return lam * min(1.0, (epoch - self.start_epoch + 1) / (self.warmup_epochs + 1))

    # -- grid ----------------------------------------------------------------------------
    def _refresh(self, trainer) -> None:
        """Compute Δ from the current weights (rank 0, broadcast) and the per-step factors."""
        epoch = trainer.current_epoch
        if self._epoch != epoch or not self._scales:
            scales = None
            if trainer.is_global_zero:
                scales = {
                    n: compute_scale(p.detach(), self.bits, self.granularity, self.clip).to("cpu", torch.float32)
                    for n, p in self._params.items()
                }
            self._scales = _base.broadcast(trainer, scales)
            self._epoch = epoch
        self._lambda = self.lambda_at(epoch)
        flat: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for n, p in self._params.items():
            s = broadcast_scale(self._scales[n].to(p.device, p.dtype), p)
            self._inv[n] = 1.0 / s
            self._coef[n] = s * (self._lambda / math.pi)
            self._limit[n] = s * qmax(self.bits)
            key = (p.device, p.dtype)
            if key not in flat:  # two scratch buffers per device/dtype, as big as the largest target
                size = max(q.numel() for q in self._params.values() if (q.device, q.dtype) == key)
                flat[key] = tuple(torch.empty(size, device=p.device, dtype=p.dtype) for _ in range(2))
            self._work[n] = tuple(buf[: p.numel()].view(p.shape) for buf in flat[key])
        self._factors_epoch = epoch

    @torch.no_grad()
    def snap_(self, trainer=None) -> None:
        """Snap every target onto its grid with the stored Δ (idempotent)."""
        if not self._scales and trainer is not None:
            self._refresh(trainer)
        for n, p in self._params.items():
            p.copy_(snap(p, self._scales[n].to(p.device), self.bits))
        self._snapped = True

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        _base.check_strategy(trainer, type(self).__name__)
        self._params = {t.name: t.param for t in _base.resolve_targets(pl_module, self.targets, self.include, self.exclude)}
        self._opt_params = {}
        self._factors_epoch = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Δ is recomputed lazily at the epoch's first optimizer step, after every
        # epoch-start hook (e.g. a sparsifier's new masks) has run; it then stays fixed
        # for the whole epoch.
        self._snapped = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._factors_epoch != trainer.current_epoch:
            self._refresh(trainer)
        if self._lambda == 0.0:
            return
        ids = self._opt_params.get(id(optimizer))
        if ids is None:  # only the parameters this optimizer steps (several optimizers)
            ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
            self._opt_params[id(optimizer)] = ids
        lam = self._lambda if self.pull_clipped else 0.0  # the clip term's factor
        with torch.no_grad():
            for n, p in self._params.items():
                if p.grad is not None and id(p) in ids:
                    scaled_grad_(p.grad, p, self._inv[n], self._coef[n], self._limit[n], lam, self._work[n])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Snap before the last epoch's validation and ModelCheckpoint save.
        if self.snap_on_fit_end and _base.is_final_batch(trainer):
            self.snap_(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        end = _base.last_epoch(trainer)
        if self.snap_on_fit_end and (trainer.should_stop or (end is not None and trainer.current_epoch >= end)):
            self.snap_(trainer)  # user callbacks run before ModelCheckpoint's epoch-end save
        if trainer.is_global_zero and self._scales:
            self._log(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.snap_on_fit_end:
            self.snap_(trainer)

    @torch.no_grad()
    def _log(self, trainer, pl_module) -> None:
        pen = dist = near = clip = 0.0
        total = 0
        for n, p in self._params.items():
            s = self._scales[n].to(p.device)
            d = grid_distance(p, s, self.bits)
            pen += float(penalty(p.detach().float(), s, self.bits, self.pull_clipped))
            dist += float(d.sum())
            near += float((d <= 0.05).sum())
            clip += float((d > 0.5).sum())  # within the range no weight is farther than Δ/2
            total += p.numel()
        metrics = {
            f"{self.log_prefix}/quant_penalty": pen / total,  # per-weight mean of R (1 − |cos| in range)
            f"{self.log_prefix}/grid_distance": dist / total,  # mean |w − snap(w)| / Δ
            f"{self.log_prefix}/on_grid_frac": near / total,  # share within 0.05 Δ of the grid
            f"{self.log_prefix}/clipped_frac": clip / total,  # share beyond the range, clamped on export
            f"{self.log_prefix}/quant_lambda": self._lambda,
        }
        _base.log_metrics(trainer, pl_module, metrics)
        if self.log_histograms:
            _base.log_histograms(trainer, {n: p for n, p in self._params.items()}, f"{self.log_prefix}/weights")

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": _base.STATE_VERSION,
            "bits": self.bits,
            "granularity": self.granularity,
            "clip": self.clip,
            "scales": _base.to_cpu_state(self._scales),
            "epoch": int(self._epoch),
            "weight": float(self._lambda),
            "snapped": bool(self._snapped),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        version = state_dict.get("version")
        if version != _base.STATE_VERSION:
            raise ValueError(f"QuantizationRegularizer state version must be {_base.STATE_VERSION}, got {version!r}")
        for key in ("bits", "granularity", "clip"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"checkpoint was trained with {key}={state_dict[key]!r}, this callback has {getattr(self, key)!r}"
                )
        self._scales = {n: s.to(torch.float32) for n, s in state_dict["scales"].items()}
        self._epoch = int(state_dict["epoch"])
        self._lambda = float(state_dict["weight"])
        self._snapped = bool(state_dict.get("snapped", False))


class QuantizationRegularizer(QuantizationRegularizerCore, pl.Callback):
    r"""Backward-pass quantization regularizer toward the symmetric mid-tread export grid.

    Math. For a targeted weight ``w`` with grid step Δ (per output channel or per tensor,
    ``compress.quant.grid.compute_scale``), the absolute-cosine penalty (Naumov et al.
    2018, periodic regularizers) is ``R(w) = Σ (1 − |cos(π w/Δ)|)``: 0 on the grid,
    1 per weight halfway. After ``backward`` the callback adds, in closed form,

        grad += λ · (Δ/π)² · ∂R/∂w = λ · (Δ/π) · sign(cos(π w/Δ)) · sin(π w/Δ)

    Weights beyond the clipping range ``qmax·Δ``, which export clamps, get
    ``λ · (w − clamp(w))`` with ``pull_clipped`` (the default): they are pulled to the
    edge level, which holds the range near the first epoch's, a max-norm constraint that
    helped at 8 bits. With ``pull_clipped=False`` they get nothing: the task sets the
    range and Δ follows it at the next epoch. Measured trade-offs in
    ``compress.quant.penalty`` and docs/callbacks.md.

    The factor (Δ/π)² removes the π/Δ growth of the raw gradient: the added term is about
    ``λ · (w − snap(w))``, a per-weight pull proportional to the distance to the grid in
    weight units. It depends neither on the bit width nor on the layer's range nor on the
    tensor size (a per-weight quantity, no sum over the tensor), so one λ works across
    layers and models. The logged value is the per-weight mean of ``1 − |cos|``.

    Few bits. With Adam, once a weight's task gradient is small the added term decides its
    step and locks it onto its nearest level; at 4 bits the levels are far apart and a
    network locked early stops learning. Start the pull late and gently there
    (``start_epoch`` a few epochs before the end, a smaller ``weight``): measured figures
    in docs/callbacks.md and ``recipes/compression/sparse75_qreg4.yaml``.

    When Δ changes. Δ is computed from the weights at each epoch's first optimizer step
    (after all epoch-start hooks), on rank 0, broadcast to all ranks, stored in the state,
    and kept fixed for that epoch. ``clip`` picks the rule: "max" (Δ = max|w|/qmax) or
    "mse" (the MSE-optimal clipping of ``grid.mse_scale``); None = "mse" for
    bits <= 4, where levels are too few to spend on outliers, else "max".

    With a sparsifier. Pruned weights are exact zeros: 0 is a grid point where the added
    gradient ``sin(0)`` vanishes, zeros never set ``max|w|`` and are excluded from the MSE
    clipping error, so masked weights stay at 0 and do not affect Δ; no coupling needed.

    Snapping. With ``snap_on_fit_end`` the weights are snapped with the stored Δ after the
    last training batch of the fit (before the last validation and before
    ModelCheckpoint's last save), again at the last epoch's end and in ``on_fit_end``
    (idempotent), so the final checkpoint holds exactly what export writes. A run cut
    short by early stopping is snapped in ``on_fit_end``: a checkpoint saved during the
    stopping epoch may hold unsnapped weights, the state after ``fit`` (and any
    ``trainer.save_checkpoint``) is snapped.

    Args:
        bits: bit width, 2..8.
        weight: λ, a float >= 0 or a callable ``epoch -> float``.
        granularity: "channel" (Δ per output channel, axis 0) or "tensor".
        clip: "max", "mse", or None (auto, see above).
        targets: exact parameter names; None = ``compress.find_targets`` defaults.
        include, exclude: regexes on parameter names that adjust the defaults.
        warmup_epochs: λ ramps linearly as ``min(1, (epoch−start_epoch+1)/(warmup_epochs+1))``.
        pull_clipped: pull weights beyond the clipping range to the edge level.
        start_epoch: no pull before this epoch (λ = 0; Δ is still computed and logged), so
            that the network can find its range and its masks first.
        snap_on_fit_end: snap the weights onto the grid when fitting ends.
        log_histograms: weight histograms of a few layers when the logger is TensorBoard.
        log_prefix: logged keys are ``{log_prefix}/quant_penalty``, ``/grid_distance``
            (mean in units of Δ), ``/on_grid_frac`` (within 0.05Δ), ``/clipped_frac``
            (beyond the range by more than Δ/2: clamped on export), ``/quant_lambda``.

    Example:
        >>> import pytorch_lightning as pl
        >>> from compress import QuantizationRegularizer
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[QuantizationRegularizer(bits=4)])
    """
