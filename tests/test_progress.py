"""StageTimer and RunProgress on a toy fit: the stage times add up to the fit, a slow
callback is charged to ``callbacks`` and nothing else, and the progress bar prints its
estimate and closes."""

from __future__ import annotations

import io
import time

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.progress import STAGES, RunProgress, StageTimer, format_seconds


class Toy(pl.LightningModule):
    def __init__(self, forward_sleep=0.0):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.forward_sleep = forward_sleep

    def training_step(self, batch, batch_idx):
        time.sleep(self.forward_sleep)
        x, y = batch
        return ((self.lin(x) - y) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/wer", ((self.lin(x) - y) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SlowAfterBackward(pl.Callback):
    def on_after_backward(self, trainer, pl_module):
        time.sleep(0.02)


def loader(n=8):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=2)


def fit(callbacks, model=None, epochs=2, **kw):
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, **kw)
    t0 = time.perf_counter()
    trainer.fit(model or Toy(), train_dataloaders=loader(), val_dataloaders=loader(4))
    return time.perf_counter() - t0


def test_stage_times_add_up_and_a_slow_callback_is_charged_to_callbacks():
    timer = StageTimer()
    wall = fit(timer.around([SlowAfterBackward()]), model=Toy(forward_sleep=0.01), enable_progress_bar=False)
    s = timer.summary()
    assert s["steps"] == 8  # 4 batches x 2 epochs
    assert all(s[k] >= 0 for k in STAGES)
    assert s["callbacks"] >= 8 * 0.02  # the sleeps in on_after_backward
    assert s["callbacks"] < 8 * 0.02 + 0.5
    assert s["forward"] >= 8 * 0.01 and s["backward"] < 8 * 0.02  # not charged to backward
    assert sum(s[k] for k in STAGES) <= wall


def test_timer_must_wrap_the_callbacks_in_order():
    timer = StageTimer()
    cbs = timer.around(["a", "b"])
    assert cbs[0] is timer and cbs[-1] is timer.closing and cbs[1:3] == ["a", "b"]


def test_progress_prints_an_estimate_and_closes():
    out = io.StringIO()
    bar = RunProgress(warmup_steps=2, after_fit_batches=3, stream=out)
    fit([bar], epochs=2)
    text = out.getvalue()
    assert "speed:" in text and "s per training step (steps 2-3)" in text
    assert "2 epochs x 4 steps" in text
    assert "8/8" in text  # one bar for every step of the fit


def test_estimate_and_format():
    assert RunProgress.estimate(steps_left=10, val_runs=2, step_s=1.0, val_s=5.0, after_s=3.0) == 23.0
    assert format_seconds(65) == "1 min 05 s" and format_seconds(42.4) == "42 s"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_warmup_steps_is_checked(bad):
    with pytest.raises(ValueError, match="warmup_steps"):
        RunProgress(warmup_steps=bad)
