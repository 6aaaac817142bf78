"""``QuantizationRegularizer``: pulls weights onto the export grid while they train.

The forward pass never runs fake-quantization ops. The gradient form adds the closed-form
gradient of the absolute-cosine penalty to ``.grad`` before the optimizer step; the
decoupled forms (prox, relax, hard) move the weights toward the grid after the optimizer
step (``compress.quant.prox``), so an adaptive optimizer only ever sees the task gradient.
No autograd graph is built over the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch

from compress import checkpoint as contract
from compress.callbacks import _base
from compress.checks import check_bits, check_bool, check_choice, check_int, check_number, is_int
from compress.quant.grid import CLIPS, GRANULARITIES, broadcast_scale, compute_scale, default_clip, qmax, snap
from compress.quant.penalty import grid_distance, penalty, scaled_grad_
from compress.quant.prox import prox_step_, rho_at

DEFAULT_WEIGHT = 0.03  # λ of the gradient form (scale-free, see compress.quant.penalty)
DEFAULT_RHO_MIN = 1e-4  # ρ at the start of the decoupled pull's anneal (compress.quant.prox)
# Where the pull starts by default, as a fraction of the run (relax: measured on valid,
# bench/accuracy_finetune.md; prox and hard: halfway, free training first).
DEFAULT_PULL_START = {"grad": 0, "prox": 0.5, "hard": 0.5, "relax": 0.0}
# Default form per bit width, chosen by measurement (docs/callbacks.md, "Which form"):
# the gradient form at >= GRAD_MIN_BITS bits, the relax form below.
GRAD_MIN_BITS = 7
MODES = ("grad", "prox", "hard", "relax")

Weight = float | Callable[[int], float]


def default_mode(bits: int) -> str:
    """The form ``QuantizationRegularizer(bits=b)`` uses: "grad" at >= 7 bits, else "relax"."""
    return "grad" if check_bits("bits", bits) >= GRAD_MIN_BITS else "relax"


def _check_weight(value, name: str = "weight") -> float:
    return check_number(name, value, low=0.0, finite=True, hint=" (or a callable epoch -> such a number)")


def _check_start(value):
    """``start_epoch``: None, an epoch (int >= 0) or a fraction of the run (float in [0, 1])."""
    if value is None or (is_int(value) and value >= 0) or (isinstance(value, float) and 0.0 <= value <= 1.0):
        return value
    raise ValueError(f"start_epoch must be None, an epoch (integer >= 0) or a fraction of the run "
                     f"(float in [0, 1]), got {value!r}")


@dataclass
class _Target:
    """One compressed parameter and its grid: ``scale`` is the state, the rest per-epoch factors."""

    param: torch.nn.Parameter
    scale: torch.Tensor | None = None  # Δ, float32 CPU, () or (C,)
    step: torch.Tensor | None = None  # Δ, broadcast shape, on the parameter's device and dtype
    inv: torch.Tensor | None = None  # 1/Δ
    coef: torch.Tensor | None = None  # λ·Δ/π (gradient form)
    limit: torch.Tensor | None = None  # qmax·Δ, the clipping edge
    work: tuple = ()  # two scratch views shaped like the parameter
    latent: torch.Tensor | None = None  # relax form: the float weights the optimizer steps


class QuantizationRegularizerCore:
    r"""Pulls weights onto the export grid during training, in one of three forms.

    The forward pass is never touched (no fake quantization). Let Δ be the grid step (per
    output channel or per tensor, ``compress.quant.grid.compute_scale``) and
    ``snap(w)`` the nearest exported level.

    * ``mode="grad"``: backward-pass absolute-cosine regularization (ACosR; the periodic
      regularizers of Naumov et al. 2018). After ``backward``, before the optimizer step,
      the closed-form gradient of ``λ·(Δ/π)²·R(w)``, ``R = Σ 1 − |cos(π w/Δ)|``, is added
      to ``.grad``:

          grad += λ · (Δ/π) · sign(cos(π w/Δ)) · sin(π w/Δ)  ≈  λ · (w − snap(w))

      Scale-free (no dependence on bits, the layer's range or size). Weights beyond the
      clipping range ``qmax·Δ`` get ``λ·(w − clamp(w))`` with ``pull_clipped`` (default):
      they are held at the edge level, a max-norm constraint. ``start_epoch`` and
      ``warmup_epochs`` shape λ per epoch. With an adaptive optimizer (Adam) a term added
      to ``.grad`` is divided by the coordinate's running gradient size, so where the task
      gradient is small it decides the step and locks the weight onto its level; at few
      bits that stops learning early.
    * ``mode="prox"``: the decoupled form (``compress.quant.prox``). After each optimizer
      step, ``w ← w − ρ_t·(w − snap(w))``, with ρ rising log-linearly from ``rho_min`` at
      ``start_epoch`` to exactly 1 at the last step, so the run ends on the grid because
      training put it there. The optimizer only ever sees the task gradient.
    * ``mode="relax"``: the prox step on latent weights (BinaryRelax, Yin et al. 2018;
      the form of torchao's PARQ). The optimizer steps a float copy ``z``; the model's
      weights are ``w = (1 − ρ_t)·z + ρ_t·snap(z)`` with the prox form's schedule, so the
      forward and backward see the relaxed weights and the gradient at ``w`` moves ``z``
      (at ρ = 1 that is fake quantization with a straight-through gradient). A weight can
      still change level late in the run, when ``z`` crosses a midpoint. ``z`` is saved in
      the state (one float copy of the targets). With a ``GradualSparsifier`` in the same
      trainer, ``z`` is masked with its masks.
    * ``mode="hard"``: the hard compressor of S8BQAT (Zhen et al. 2022): from
      ``start_epoch`` on, the weights are snapped onto the grid every ``hard_every``
      optimizer steps and at the last step, training on in float in between.

    ``mode=None`` picks the gradient form when ``weight`` or ``warmup_epochs`` is given
    (they are its settings), else ``default_mode(bits)``: the gradient form at 7-8 bits,
    the relax form below, by measurement (docs/callbacks.md, "Which form").

    When Δ changes. Δ is computed from the weights at each epoch's first optimizer step
    (after every epoch-start hook, e.g. a sparsifier's new masks), on rank 0, broadcast,
    stored in the state and fixed for the epoch. ``clip`` picks the rule, None =
    ``grid.default_clip(bits)``: the one rule export, verify and the benchmark's PTQ use.

    With a sparsifier. Pruned weights are exact zeros: 0 is a level, the gradient form's
    term vanishes there, the prox step maps 0 to 0, and zeros never set Δ. Masks are
    re-applied by the sparsifier after every optimizer step, so in every form pruned
    weights stay exactly 0.

    Snapping. With ``snap_on_fit_end`` the weights are snapped with the stored Δ after the
    last training batch (before the last validation and ModelCheckpoint's last save),
    again at the last epoch's end and in ``on_fit_end`` (idempotent). In the prox and hard
    forms the last step already leaves them on the grid.

    Args:
        bits: bit width, 2..8.
        mode: "grad", "prox", "relax", "hard", or None (``default_mode(bits)``).
        weight: λ of the gradient form, a float >= 0 or a callable ``epoch -> float``;
            None = 0.03. Not used by the other forms.
        granularity: "channel" (Δ per output channel, axis 0) or "tensor".
        clip: "max", "mse", or None (``grid.default_clip``: "mse" at <= 4 bits).
        targets: exact parameter names; None = ``compress.find_targets`` defaults.
        include, exclude: regexes on parameter names that adjust the defaults.
        warmup_epochs: gradient form: λ ramps as ``min(1, (epoch−start+1)/(warmup_epochs+1))``.
        start_epoch: when the pull starts: an epoch (int) or a fraction of the run (float
            in [0, 1], e.g. 0.7, so a recipe keeps working when ``max_epochs`` changes).
            None = 0 for the gradient and relax forms, 0.5 for prox and hard. Δ is computed
            and logged before it.
        rho_min: prox form: ρ at the start of the anneal, in (0, 1).
        hard_every: hard form: snap every this many optimizer steps.
        pull_clipped: gradient form: pull weights beyond the clipping range to the edge.
        snap_on_fit_end: snap the weights onto the grid when fitting ends.
        log_histograms: weight histograms of a few layers when the logger is TensorBoard.
        log_prefix: logged keys are ``{log_prefix}/quant_penalty``, ``/grid_distance``
            (mean in units of Δ), ``/on_grid_frac`` (within 0.05Δ), ``/clipped_frac``
            (clamped on export), ``/quant_lambda`` (gradient form), ``/quant_rho`` (prox).

    Example:
        >>> import pytorch_lightning as pl
        >>> from compress import QuantizationRegularizer
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[QuantizationRegularizer(bits=4)])
    """

    def __init__(
        self,
        bits: int = 8,
        weight: Weight | None = None,
        granularity: str = "channel",
        clip: str | None = None,
        targets: Sequence[str] | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        warmup_epochs: int = 0,
        start_epoch: int | float | None = None,
        pull_clipped: bool = True,
        snap_on_fit_end: bool = True,
        log_histograms: bool = True,
        log_prefix: str = "compress",
        mode: str | None = None,
        rho_min: float = DEFAULT_RHO_MIN,
        hard_every: int = 50,
    ) -> None:
        super().__init__()
        self.bits = check_bits("bits", bits)
        if mode is None:  # λ or a λ warm-up only mean something to the gradient form
            mode = "grad" if weight is not None or warmup_epochs else default_mode(bits)
        self.mode = check_choice("mode", mode, MODES, optional=True)
        if weight is not None and self.mode != "grad":
            raise ValueError(f"weight (λ) applies to mode='grad' only, got weight={weight!r} with mode={self.mode!r}")
        if weight is not None and not callable(weight):
            _check_weight(weight)
        self.weight = DEFAULT_WEIGHT if weight is None else weight
        self.granularity = check_choice("granularity", granularity, GRANULARITIES)
        check_choice("clip", clip, CLIPS, optional=True)
        self.clip = default_clip(bits) if clip is None else clip
        check_int("warmup_epochs", warmup_epochs, min=0)
        if warmup_epochs and self.mode != "grad":
            raise ValueError(f"warmup_epochs applies to mode='grad' only, got {warmup_epochs!r} with mode={self.mode!r}")
        self.warmup_epochs = warmup_epochs
        start = _check_start(start_epoch)
        self.start_epoch = DEFAULT_PULL_START[self.mode] if start is None else start
        self.rho_min = check_number("rho_min", rho_min, low=0.0, high=1.0, low_open=True, high_open=True)
        self.hard_every = check_int("hard_every", hard_every, min=1)
        self.pull_clipped = check_bool("pull_clipped", pull_clipped)
        self.snap_on_fit_end = check_bool("snap_on_fit_end", snap_on_fit_end)
        _base.check_targets_arg(targets, include, exclude)
        self.targets, self.include, self.exclude = targets, include, exclude
        self.log_histograms = check_bool("log_histograms", log_histograms)
        self.log_prefix = _base.check_prefix(log_prefix)
        self._t: dict[str, _Target] = {}  # fqn -> parameter and grid
        self._saved_scales: dict[str, torch.Tensor] = {}  # restored from a checkpoint before setup
        self._saved_latent: dict[str, torch.Tensor] = {}
        self._mask_cache: dict[str, tuple] = {}  # fqn -> (the sparsifier's bool mask, its float form)
        self._epoch = -1  # epoch whose start the scales were computed at
        self._lambda = 0.0
        self._rho = 0.0
        self._snapped = False
        self._opt_params: dict[int, set[int]] = {}
        self._factors_epoch: int | None = None  # epoch the per-step factors were built for
        self._max_epochs: int | None = None
        self._total_steps: int | None = None
        self._last_step = -1  # global step the last prox/hard step ran after

    @property
    def state_key(self) -> str:
        return _base.state_key(
            self, bits=self.bits, granularity=self.granularity, clip=self.clip,
            targets=self.targets, include=self.include, exclude=self.exclude,
        )

    @property
    def scales(self) -> dict[str, torch.Tensor]:
        """fqn -> grid step Δ (float32, CPU), as used this epoch and stored in the state."""
        if not self._t:
            return dict(self._saved_scales)
        return {n: t.scale for n, t in self._t.items() if t.scale is not None}

    @property
    def _params(self) -> dict[str, torch.nn.Parameter]:
        return {n: t.param for n, t in self._t.items()}

    # -- schedules (pure given the run's length) -----------------------------------------------
    def start_fraction(self, max_epochs: int | None = None) -> float:
        """The pull's start as a fraction of the run (an epoch start_epoch is start_epoch/max_epochs)."""
        if isinstance(self.start_epoch, float):
            return self.start_epoch
        max_epochs = self._max_epochs if max_epochs is None else max_epochs
        if not max_epochs:
            raise ValueError("start_epoch given as an epoch needs the trainer's max_epochs for this form")
        return min(1.0, self.start_epoch / max_epochs)

    def start_epoch_index(self, max_epochs: int | None = None) -> int:
        """The first epoch of the gradient form's pull (a fraction is floor(fraction · max_epochs))."""
        if isinstance(self.start_epoch, int):
            return self.start_epoch
        max_epochs = self._max_epochs if max_epochs is None else max_epochs
        if not max_epochs:
            raise ValueError("start_epoch given as a fraction needs a bounded trainer (max_epochs)")
        return int(math.floor(self.start_epoch * max_epochs))

    def lambda_at(self, epoch: int, max_epochs: int | None = None) -> float:
        """λ of the gradient form at ``epoch``: 0 before the start epoch, then ``weight`` (or
        ``weight(epoch)``) times the ramp ``min(1, (epoch − start + 1) / (warmup_epochs + 1))``."""
        if self.mode != "grad":
            return 0.0
        first = self.start_epoch_index(max_epochs)
        if epoch < first:
            return 0.0
        lam = _check_weight(self.weight(epoch) if callable(self.weight) else self.weight, "weight(epoch)")
        return lam * min(1.0, (epoch - first + 1) / (self.warmup_epochs + 1))

    def rho_at_step(self, step: int, total_steps: int | None = None, max_epochs: int | None = None) -> float:
        """ρ of the prox form after optimizer step ``step`` (1-based) of ``total_steps``."""
        total = self._total_steps if total_steps is None else total_steps
        return rho_at(step / total, self.start_fraction(max_epochs), self.rho_min)

    # -- grid ----------------------------------------------------------------------------
    def _refresh(self, trainer) -> None:
        """Compute Δ from the current weights (rank 0, broadcast) and the per-step factors."""
        epoch = trainer.current_epoch
        have = all(t.scale is not None for t in self._t.values())
        if self._epoch != epoch or not have:
            scales = None
            if trainer.is_global_zero:
                scales = {  # the relax form's grid follows the latent weights
                    n: compute_scale((t.latent if t.latent is not None else t.param).detach(), self.bits,
                                     self.granularity, self.clip).to("cpu", torch.float32)
                    for n, t in self._t.items()
                }
            scales = _base.broadcast(trainer, scales)
            for n, t in self._t.items():
                t.scale = scales[n]
            self._epoch = epoch
        self._lambda = self.lambda_at(epoch)
        flat: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in self._t.values():
            p = t.param
            s = broadcast_scale(t.scale.to(p.device, p.dtype), p)
            t.step, t.inv = s, 1.0 / s
            t.coef = s * (self._lambda / math.pi)
            t.limit = s * qmax(self.bits)
            key = (p.device, p.dtype)
            if key not in flat:  # two scratch buffers per device/dtype, as big as the largest target
                size = max(q.param.numel() for q in self._t.values() if (q.param.device, q.param.dtype) == key)
                flat[key] = tuple(torch.empty(size, device=p.device, dtype=p.dtype) for _ in range(2))
            t.work = tuple(buf[: p.numel()].view(p.shape) for buf in flat[key])
        self._factors_epoch = epoch

    @torch.no_grad()
    def snap_(self, trainer=None) -> None:
        """Snap every target onto its grid with the stored Δ (idempotent)."""
        if trainer is not None and any(t.scale is None for t in self._t.values()):
            self._refresh(trainer)
        for t in self._t.values():
            p = t.param
            p.copy_(snap(p, t.scale.to(p.device), self.bits))
        self._snapped = True

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        _base.check_strategy(trainer, type(self).__name__)
        found = _base.resolve_targets(pl_module, self.targets, self.include, self.exclude)
        self._t = {t.name: _Target(t.param, self._saved_scales.get(t.name)) for t in found}
        self._restore_latent()
        self._opt_params = {}
        self._factors_epoch = None
        end = _base.last_epoch(trainer)
        self._max_epochs = None if end is None else end + 1
        if isinstance(self.start_epoch, float) and self.mode == "grad" and self._max_epochs is None:
            raise ValueError("start_epoch given as a fraction needs a bounded trainer (max_epochs)")

    def _restore_latent(self) -> None:
        """Put the relax form's saved latent weights in place (setup and checkpoint load come in either order)."""
        for n, t in self._t.items():
            if n in self._saved_latent:
                t.latent = self._saved_latent[n].to(t.param.device, t.param.dtype).clone()

    def on_train_start(self, trainer, pl_module) -> None:
        if self.mode == "grad":
            return
        total = trainer.estimated_stepping_batches
        if not isinstance(total, int) and not (isinstance(total, float) and math.isfinite(total)):
            raise ValueError(f"mode={self.mode!r} anneals over the run and needs a bounded one "
                             f"(max_epochs or max_steps), got {total!r} steps")
        if not getattr(pl_module, "automatic_optimization", True):
            total *= max(1, len(trainer.optimizers))  # manual: global_step counts every optimizer's steps
        self._total_steps = max(int(total), 1)
        if isinstance(self.start_epoch, int) and self._max_epochs is None:
            raise ValueError("start_epoch given as an epoch needs the trainer's max_epochs for this form")
        self._last_step = int(trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Δ is recomputed lazily at the epoch's first optimizer step, after every
        # epoch-start hook (e.g. a sparsifier's new masks) has run; it then stays fixed
        # for the whole epoch.
        self._snapped = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.mode == "relax":
            with torch.no_grad():
                for t in self._t.values():  # the gradient at w steps z: put z in place for the step
                    if t.latent is None:
                        t.latent = t.param.detach().clone()
                    else:
                        t.param.copy_(t.latent)
        if self._factors_epoch != trainer.current_epoch:
            self._refresh(trainer)
        if self.mode != "grad" or self._lambda == 0.0:
            return
        ids = self._opt_params.get(id(optimizer))
        if ids is None:  # only the parameters this optimizer steps (several optimizers)
            ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
            self._opt_params[id(optimizer)] = ids
        lam = self._lambda if self.pull_clipped else 0.0  # the clip term's factor
        with torch.no_grad():
            for t in self._t.values():
                p = t.param
                if p.grad is not None and id(p) in ids:
                    scaled_grad_(p.grad, p, t.inv, t.coef, t.limit, lam, t.work)

    @torch.no_grad()
    def _decoupled_step(self, trainer) -> None:
        """The prox or hard step after an optimizer step (once per step, not per batch)."""
        step = int(trainer.global_step)
        if step == self._last_step or self._factors_epoch is None:
            return
        self._last_step = step
        final = step >= self._total_steps
        if self.mode == "relax":
            self._relax_step(trainer, 1.0 if final else self.rho_at_step(step))
            return
        if self.mode == "prox":
            rho = 1.0 if final else self.rho_at_step(step)
        else:  # hard: snap every hard_every steps once the pull has started
            started = step / self._total_steps >= self.start_fraction()
            rho = 1.0 if final or (started and step % self.hard_every == 0) else 0.0
        self._rho = rho
        if rho == 0.0:
            return
        if rho >= 1.0:
            self.snap_()
            self._snapped = False  # training goes on after a periodic snap
            return
        qm = qmax(self.bits)
        for t in self._t.values():
            prox_step_(t.param, t.step, t.inv, qm, rho, t.work[0])

    @torch.no_grad()
    def _relax_step(self, trainer, rho: float) -> None:
        """z ← the optimizer's result (masked like the sparsifier's), w ← (1 − ρ) z + ρ snap(z)."""
        masks = {}
        for cb in getattr(trainer, "callbacks", []) or []:
            if type(cb).__name__.startswith("GradualSparsifier"):
                masks.update(cb.masks)
        self._rho = rho
        qm = qmax(self.bits)
        for n, t in self._t.items():
            p = t.param
            t.latent.copy_(p)
            if n in masks:  # the float form of a mask, rebuilt only when the sparsifier installs new ones
                key, fmask = self._mask_cache.get(n, (None, None))
                if key is not masks[n]:
                    fmask = masks[n].to(p.dtype)
                    self._mask_cache[n] = (masks[n], fmask)
                t.latent.mul_(fmask)
            if rho >= 1.0:
                p.copy_(snap(t.latent, t.scale.to(p.device), self.bits))
            elif rho > 0.0:
                prox_step_(p.copy_(t.latent), t.step, t.inv, qm, rho, t.work[0])
            else:
                p.copy_(t.latent)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.mode != "grad":
            self._decoupled_step(trainer)
        # Snap before the last epoch's validation and ModelCheckpoint save.
        if self.snap_on_fit_end and _base.is_final_batch(trainer):
            self.snap_(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        end = _base.last_epoch(trainer)
        if self.snap_on_fit_end and (trainer.should_stop or (end is not None and trainer.current_epoch >= end)):
            self.snap_(trainer)  # user callbacks run before ModelCheckpoint's epoch-end save
        if trainer.is_global_zero and self.scales:
            self._log(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.snap_on_fit_end:
            self.snap_(trainer)

    @torch.no_grad()
    def _log(self, trainer, pl_module) -> None:
        pen = dist = near = clip = 0.0
        total = 0
        for t in self._t.values():
            p = t.param
            s = t.scale.to(p.device)
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
        }
        metrics[f"{self.log_prefix}/quant_{'lambda' if self.mode == 'grad' else 'rho'}"] = (
            self._lambda if self.mode == "grad" else self._rho)
        _base.log_metrics(trainer, pl_module, metrics)
        if self.log_histograms:
            _base.log_histograms(trainer, self._params, f"{self.log_prefix}/weights")

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": contract.REGULARIZER_VERSION,
            "bits": self.bits,
            "granularity": self.granularity,
            "clip": self.clip,
            "mode": self.mode,
            "scales": _base.to_cpu_state(self.scales),
            "epoch": int(self._epoch),
            "lambda": float(self._lambda),
            "snapped": bool(self._snapped),
            **({contract.REGULARIZER_LATENT: _base.to_cpu_state({n: t.latent for n, t in self._t.items() if t.latent is not None})}
               if self.mode == "relax" else {}),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        version = contract.check_version(contract.REGULARIZER, state_dict)
        saved = dict(state_dict, mode=state_dict.get("mode", "grad"))  # version 1 had the gradient form only
        contract.check_settings(contract.REGULARIZER, saved,
                                {k: getattr(self, k) for k in contract.REGULARIZER_SETTINGS})
        scales = {n: s.to(torch.float32) for n, s in state_dict["scales"].items()}
        self._saved_scales = scales
        for n, t in self._t.items():
            t.scale = scales.get(n)
        self._epoch = int(state_dict["epoch"])
        self._lambda = float(state_dict[contract.LAMBDA_KEY[version]])
        self._snapped = bool(state_dict.get("snapped", False))
        self._saved_latent = dict(state_dict.get(contract.REGULARIZER_LATENT) or {})
        self._restore_latent()


class QuantizationRegularizer(QuantizationRegularizerCore, pl.Callback):
    __doc__ = QuantizationRegularizerCore.__doc__
