"""What the three speech models share: the batch contract, metrics, optimizer and schedule.

A subclass implements ``compute_loss(batch)`` and ``transcribe(features, feature_lengths)``;
this base turns them into Lightning's training/validation/test steps and logs
``train/loss``, ``val/loss``, ``val/wer``, ``test/loss``, ``test/wer`` and ``test/cer``.
It also holds the strided-convolution front end and the CTC helpers used by
``CTCLSTM`` and ``ConformerCTC``.

The optimizer is AdamW without weight decay on biases and norm weights (decaying them
only fights the normalization). The schedule is per step: ``onecycle`` (Smith & Topin
2017, "Super-Convergence": warm up to ``lr`` then cosine-anneal to ~0), ``cosine`` (linear
warmup then cosine) or ``constant``.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.text import CharErrorRate, WordErrorRate

from compress.checks import check_choice, check_int, check_number, fail
from compress.data.text import BLANK, ctc_collapse

SCHEDULES = ("onecycle", "cosine", "constant")


def check_common(vocab_size, lr, weight_decay, schedule, warmup_pct) -> None:
    """Validate the constructor arguments every model takes."""
    check_int("vocab_size", vocab_size, min=2)  # the blank and at least one symbol
    check_number("lr", lr, low=0.0, low_open=True, finite=True)
    check_number("weight_decay", weight_decay, low=0.0, finite=True)
    check_choice("schedule", schedule, SCHEDULES)
    check_number("warmup_pct", warmup_pct, low=0.0, high=1.0, low_open=True, high_open=True)


class ConvSubsampling(nn.Module):
    """Strided Conv1d front end: (B, T, F) -> (B, T / factor, channels).

    Two kernel-5 convolutions; each stride-2 one halves the frame rate, so the recurrent
    or attention layers behind it run on 25 Hz frames (factor 4) instead of 100 Hz.

    Example:
        >>> sub = ConvSubsampling(80, 32, factor=4)
        >>> y, n = sub(torch.zeros(2, 101, 80), torch.tensor([101, 60]))
        >>> tuple(y.shape), n.tolist()
        ((2, 26, 32), [26, 15])
    """

    def __init__(self, in_features: int, channels: int, factor: int = 4):
        super().__init__()
        if factor not in (1, 2, 4, 8):
            fail("factor", "1, 2, 4 or 8", factor)
        # 8: the second convolution strides 4 (kernel 5 still covers every input frame).
        self.strides = {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (2, 4)}[factor]
        self.conv1 = nn.Conv1d(in_features, channels, 5, stride=self.strides[0], padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 5, stride=self.strides[1], padding=2)

    def lengths(self, n: torch.Tensor) -> torch.Tensor:
        for s in self.strides:
            n = torch.div(n - 1, s, rounding_mode="floor") + 1  # conv length, kernel 5, padding 2
        return n

    @staticmethod
    def _mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        keep = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        return x * keep[:, None, :]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        # Frames past each length are zeroed before every convolution, so an utterance
        # gives the same output alone or padded in a batch.
        x = self._mask(x.transpose(1, 2), lengths)  # (B, F, T)
        n1 = torch.div(lengths - 1, self.strides[0], rounding_mode="floor") + 1  # after conv1
        x = self._mask(F.gelu(self.conv1(x)), n1)
        x = F.gelu(self.conv2(x))
        return x.transpose(1, 2), self.lengths(lengths)  # (B, T', C)


class SpeechModel(pl.LightningModule):
    """Base LightningModule; subclasses call ``super().__init__()`` then ``save_hyperparameters()``."""

    def __init__(self):
        super().__init__()
        self.val_wer = WordErrorRate()
        self.test_wer = WordErrorRate()
        self.test_cer = CharErrorRate()

    # ---------------------------------------------------------------- interface
    def compute_loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def transcribe(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> list[str]:
        raise NotImplementedError

    # -------------------------------------------------------------------- steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def _eval(self, batch: dict, prefix: str, wer: WordErrorRate, cer: CharErrorRate | None = None):
        n = len(batch["texts"])
        loss = self.compute_loss(batch)
        preds = self.transcribe(batch["features"], batch["feature_lengths"])
        wer.update(preds, batch["texts"])
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "val", batch_size=n)
        self.log(f"{prefix}/wer", wer, prog_bar=prefix == "val", batch_size=n)
        if cer is not None:
            cer.update(preds, batch["texts"])
            self.log(f"{prefix}/cer", cer, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        return self._eval(batch, "val", self.val_wer)

    def test_step(self, batch: dict, batch_idx: int):
        return self._eval(batch, "test", self.test_wer, self.test_cer)

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr)
        if hp.schedule == "constant":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if hp.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=hp.lr, total_steps=total, pct_start=hp.warmup_pct,
                div_factor=25.0, final_div_factor=1e3)  # start at lr/25, end at lr/25e3
        else:
            warm = max(int(hp.warmup_pct * total), 1)

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(total - warm, 1))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class CTCMixin:
    """CTC loss and greedy decoding for models whose ``forward`` returns (log_probs, lengths)."""

    def compute_loss(self, batch: dict) -> torch.Tensor:
        log_probs, out_lengths = self(batch["features"], batch["feature_lengths"])  # (B, T', V)
        # zero_infinity: an utterance too long for its frames adds no gradient instead of NaN.
        return F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], out_lengths,
                          batch["target_lengths"], blank=BLANK, zero_infinity=True)

    @torch.no_grad()
    def transcribe(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> list[str]:
        log_probs, out_lengths = self(features, feature_lengths)
        best = log_probs.argmax(-1)  # (B, T')
        return [ctc_collapse(best[b, : int(out_lengths[b])].tolist()) for b in range(best.shape[0])]
