"""``FakeQuantQAT``: forward fake-quantization with a straight-through estimator.

The method the other toolkits ship (torch.ao's ``FakeQuantize``, torchao, Brevitas, NNCF,
TF-MOT), here as the benchmark's peer of ``QuantizationRegularizer``, on exactly the same
grid (``compress.quant.grid``: symmetric, per channel, the same clipping rule) and the
same targets.

How. A float copy of every target is kept as the master weight. Before each training
batch the parameter is replaced by ``snap(w)``, so forward and backward run on the
quantized weights; before the optimizer step the float weight is put back and the
gradient, computed at ``snap(w)``, is applied to it (the straight-through estimator,
Bengio et al. 2013; Courbariaux et al. 2015). As in ``torch.fake_quantize_per_channel_affine``,
the gradient of a weight clamped by the grid (beyond ``qmax·Δ + Δ/2``) is zeroed.
Validation runs on the quantized weights. Swapping the values (rather than inserting a
parametrization) works for every target kind, ``nn.LSTM``'s flat weights included.

Δ is computed from the float weights at each epoch's first batch (after a sparsifier's
new masks), rank 0, broadcast, fixed for the epoch, as the regularizer does. At the end of
fitting the weights are snapped with the last Δ, and the state has the regularizer's
shape (``bits``, ``granularity``, ``clip``, ``scales``), so ``compress.export.pack``
reads it the same way.

Example:
    >>> import pytorch_lightning as pl
    >>> from compress.callbacks.fake_quant import FakeQuantQAT
    >>> trainer = pl.Trainer(max_epochs=10, callbacks=[FakeQuantQAT(bits=4)])
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch

from compress import checkpoint as contract
from compress.callbacks import _base
from compress.checks import check_bits, check_choice
from compress.quant.grid import CLIPS, GRANULARITIES, broadcast_scale, compute_scale, default_clip, qmax, snap


class FakeQuantQATCore:
    """Fake-quant QAT with STE on the export grid (see the module docstring).

    Args:
        bits: bit width, 2..8.
        granularity: "channel" (Δ per output channel, axis 0) or "tensor".
        clip: "max", "mse", or None (``grid.default_clip``).
        targets, include, exclude: as ``QuantizationRegularizer``.
    """

    def __init__(self, bits: int = 8, granularity: str = "channel", clip: str | None = None,
                 targets: Sequence[str] | None = None, include=None, exclude=None) -> None:
        super().__init__()
        self.bits = check_bits("bits", bits)
        self.granularity = check_choice("granularity", granularity, GRANULARITIES)
        check_choice("clip", clip, CLIPS, optional=True)
        self.clip = default_clip(bits) if clip is None else clip
        _base.check_targets_arg(targets, include, exclude)
        self.targets, self.include, self.exclude = targets, include, exclude
        self._params: dict[str, torch.nn.Parameter] = {}
        self._master: dict[str, torch.Tensor] = {}  # float weights while the quantized ones are in place
        self._scales: dict[str, torch.Tensor] = {}
        self._epoch = -1
        self._swapped = False

    @property
    def state_key(self) -> str:
        # Starts with the regularizer's name so that the exporter finds the grid.
        return contract.REGULARIZER + _base.state_key(
            self, bits=self.bits, granularity=self.granularity, clip=self.clip,
            targets=self.targets, include=self.include, exclude=self.exclude)

    @property
    def scales(self) -> dict[str, torch.Tensor]:
        return dict(self._scales)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        _base.check_strategy(trainer, type(self).__name__)
        self._params = {t.name: t.param for t in _base.resolve_targets(pl_module, self.targets, self.include, self.exclude)}

    @torch.no_grad()
    def _refresh(self, trainer) -> None:
        if self._epoch == trainer.current_epoch and self._scales:
            return
        scales = None
        if trainer.is_global_zero:
            scales = {n: compute_scale(p.detach(), self.bits, self.granularity, self.clip).to("cpu", torch.float32)
                      for n, p in self._params.items()}
        self._scales = _base.broadcast(trainer, scales)
        self._epoch = trainer.current_epoch

    @torch.no_grad()
    def _quantize_in_place(self) -> None:
        if self._swapped:
            return
        for n, p in self._params.items():
            buf = self._master.get(n)
            if buf is None or buf.shape != p.shape:
                buf = self._master[n] = torch.empty_like(p)
            buf.copy_(p)
            p.copy_(snap(p, self._scales[n].to(p.device), self.bits))
        self._swapped = True

    @torch.no_grad()
    def _restore(self) -> None:
        if not self._swapped:
            return
        for n, p in self._params.items():
            p.copy_(self._master[n])
        self._swapped = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._refresh(trainer)
        self._quantize_in_place()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._restore()
        with torch.no_grad():
            for n, p in self._params.items():  # STE with clipping: no gradient where the grid clamps
                if p.grad is not None:
                    edge = broadcast_scale(self._scales[n].to(p.device, p.dtype), p) * (qmax(self.bits) + 0.5)
                    p.grad.masked_fill_(p.abs() > edge, 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._restore()  # a batch that skipped the optimizer step (accumulation, a NaN guard)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._scales:
            return
        self._quantize_in_place()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()
        if not self._scales:
            self._refresh(trainer)
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(snap(p, self._scales[n].to(p.device), self.bits))

    def state_dict(self) -> dict:
        return {"version": contract.REGULARIZER_VERSION, "bits": self.bits, "granularity": self.granularity, "clip": self.clip,
                "mode": "fake_quant", "scales": _base.to_cpu_state(self._scales), "epoch": int(self._epoch),
                "lambda": 0.0, "snapped": False}

    def load_state_dict(self, state_dict: dict) -> None:
        contract.check_version(contract.REGULARIZER, state_dict)
        contract.check_settings(type(self).__name__, state_dict,
                                {k: getattr(self, k) for k in ("bits", "granularity", "clip")})
        self._scales = {n: s.to(torch.float32) for n, s in state_dict["scales"].items()}
        self._epoch = int(state_dict["epoch"])


class FakeQuantQAT(FakeQuantQATCore, pl.Callback):
    __doc__ = FakeQuantQATCore.__doc__
