"""QuantizationRegularizer in a real Trainer: added gradient, untouched forward, snapping,
checkpoints, state, logging, errors."""

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from compress import QuantizationRegularizer
from compress.quant import grid
from compress.quant.penalty import grid_distance, penalty_grad


class Tiny(pl.LightningModule):
    def __init__(self, lr=0.01):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)
        self.lr = lr
        self.outputs = []  # forward outputs seen during training

    def forward(self, x):  # (B, T, F)
        h = self.lstm(x)[0]  # (B, T, H)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (B, T, H)
        return self.head(h)  # (B, T, 3)

    def training_step(self, batch, i):
        x, y = batch
        out = self(x)
        self.outputs.append(out.detach().clone())
        return nn.functional.mse_loss(out, y)

    def validation_step(self, batch, i):
        self.log("val_loss", nn.functional.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def loader(n=24, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ds = torch.utils.data.TensorDataset(torch.randn(n, 5, 6, generator=g), torch.randn(n, 5, 3, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=batch)


def trainer(callbacks, max_epochs=2, **kw):
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("logger", False)
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, **kw,
    )


class GradProbe(pl.Callback):
    """Records each parameter's gradient as the optimizer will see it (runs after the regularizer)."""

    def __init__(self):
        self.grads, self.weights = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters()})
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def test_added_gradient_is_closed_form_and_forward_untouched():
    pl.seed_everything(0)
    plain, reg = Tiny(), Tiny()
    reg.load_state_dict(plain.state_dict())
    probe_a, probe_b = GradProbe(), GradProbe()
    cb = QuantizationRegularizer(bits=4, weight=0.5, snap_on_fit_end=False)
    trainer([probe_a], max_epochs=1, limit_train_batches=1).fit(plain, loader())
    trainer([cb, probe_b], max_epochs=1, limit_train_batches=1).fit(reg, loader())
    # forward pass: identical outputs at identical weights
    assert torch.equal(plain.outputs[0], reg.outputs[0])
    # backward: the task gradient plus exactly λ (Δ/π)² ∂R/∂w on targets, nothing else
    ga, gb, w = probe_a.grads[0], probe_b.grads[0], probe_b.weights[0]
    assert set(cb.scales) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "conv.weight", "head.weight"}
    for n in ga:
        if n in cb.scales:
            s = cb.scales[n]
            expected = 0.5 * (grid.broadcast_scale(s, w[n]) / math.pi) ** 2 * penalty_grad(w[n], s, 4)
            torch.testing.assert_close(gb[n] - ga[n], expected, atol=1e-6, rtol=1e-4)
            assert not torch.equal(gb[n], ga[n])
        else:
            assert torch.equal(gb[n], ga[n]), n  # biases untouched


def test_pulls_weights_to_grid_and_snaps_at_fit_end(tmp_path):
    pl.seed_everything(0)
    m0, m1 = Tiny(lr=0.02), Tiny(lr=0.02)
    m1.load_state_dict(m0.state_dict())
    free = QuantizationRegularizer(bits=4, weight=0.0, snap_on_fit_end=False)
    pulled = QuantizationRegularizer(bits=4, weight=5.0, snap_on_fit_end=False)
    trainer([free], max_epochs=4).fit(m0, loader())
    trainer([pulled], max_epochs=4).fit(m1, loader())

    def mean_dist(cb):
        return float(torch.cat([grid_distance(p, cb.scales[n], 4).flatten() for n, p in cb._params.items()]).mean())

    assert mean_dist(pulled) < 0.5 * mean_dist(free)
    assert mean_dist(free) > 0.15  # without the pull the weights sit anywhere between levels


@pytest.mark.parametrize("with_val,on_train_epoch_end", [(False, None), (True, None), (True, False)])
def test_last_checkpoint_holds_snapped_weights_and_matching_scales(tmp_path, with_val, on_train_epoch_end):
    # (True, False): ModelCheckpoint saves at validation end, before on_train_epoch_end
    pl.seed_everything(0)
    model = Tiny()
    cb = QuantizationRegularizer(bits=3, weight=1.0)
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_last=True, save_top_k=-1, save_on_train_epoch_end=on_train_epoch_end
    )
    t = trainer([cb, ckpt], max_epochs=2, enable_checkpointing=True)
    t.fit(model, loader(), loader(8) if with_val else None)
    t.save_checkpoint(tmp_path / "after.ckpt")
    saved = [p for p in tmp_path.glob("epoch=1*.ckpt")] + [tmp_path / "last.ckpt", tmp_path / "after.ckpt"]
    assert len(saved) == 3
    for path in saved:
        c = torch.load(path, weights_only=False)
        state = c["callbacks"][cb.state_key]
        assert state["clip"] == "mse" and state["bits"] == 3  # auto MSE clipping at <= 4 bits
        for n, s in state["scales"].items():
            w = c["state_dict"][n]
            assert torch.equal(grid.snap(w, s, 3), w), (path.name, n)
            assert torch.equal(s, cb.scales[n])
    for n, p in model.named_parameters():  # live weights too
        if n in cb.scales:
            assert torch.equal(grid.snap(p.detach(), cb.scales[n], 3), p.detach())


def test_state_contract_and_copy_semantics():
    pl.seed_everything(0)
    cb = QuantizationRegularizer(bits=8, weight=0.1, granularity="channel")
    cb_t = QuantizationRegularizer(bits=8, weight=0.1, granularity="tensor", targets=["head.weight"])
    assert cb.state_key.startswith("QuantizationRegularizer") and cb.state_key != cb_t.state_key
    model = Tiny()
    trainer([cb, cb_t], max_epochs=1, limit_train_batches=2).fit(model, loader())
    state = cb.state_dict()
    assert set(state) >= {"version", "bits", "granularity", "clip", "mode", "scales", "epoch", "lambda", "snapped"}
    assert state["version"] == 2 and state["epoch"] == 0 and state["clip"] == "max" and state["mode"] == "grad"
    assert state["scales"]["head.weight"].shape == (3,) and state["scales"]["conv.weight"].shape == (8,)
    assert cb_t.state_dict()["scales"]["head.weight"].shape == ()
    for s in state["scales"].values():
        assert s.device.type == "cpu" and s.dtype == torch.float32 and (s > 0).all()
    state["scales"]["head.weight"].fill_(123.0)  # a saved copy never aliases the live state
    assert not torch.equal(cb.scales["head.weight"], state["scales"]["head.weight"])
    fresh = QuantizationRegularizer(bits=8)
    fresh.load_state_dict(cb.state_dict())
    assert all(torch.equal(fresh.scales[n], cb.scales[n]) for n in cb.scales)
    with pytest.raises(ValueError, match="bits=8, this callback has 4"):
        QuantizationRegularizer(bits=4).load_state_dict(cb.state_dict())


def test_lambda_warmup_and_callable():
    cb = QuantizationRegularizer(weight=2.0, warmup_epochs=3)
    assert [cb.lambda_at(e) for e in range(5)] == [0.5, 1.0, 1.5, 2.0, 2.0]
    cb = QuantizationRegularizer(weight=2.0, start_epoch=2, warmup_epochs=1)
    assert [cb.lambda_at(e) for e in range(5)] == [0.0, 0.0, 1.0, 2.0, 2.0]
    cb = QuantizationRegularizer(weight=lambda e: 0.1 * e)
    assert cb.lambda_at(3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="weight\\(epoch\\) must be a finite number"):
        QuantizationRegularizer(weight=lambda e: -1.0).lambda_at(0)


def test_logs_grid_figures():
    pl.seed_everything(0)
    t = trainer([QuantizationRegularizer(bits=4, mode="grad", snap_on_fit_end=False)], max_epochs=1)
    t.fit(Tiny(), loader())
    m = t.callback_metrics
    assert 0 < float(m["compress/grid_distance"]) <= 0.5
    assert 0 <= float(m["compress/on_grid_frac"]) <= 1
    assert 0 <= float(m["compress/clipped_frac"]) < 0.5
    assert 0 < float(m["compress/quant_penalty"]) < 1


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(bits=9), ValueError, "bits must be an integer in \\[2, 8\\], got 9"),
        (dict(bits=1), ValueError, "bits must be an integer"),
        (dict(weight=-1.0), ValueError, "weight must be a finite number >= 0"),
        (dict(weight=float("nan")), ValueError, "weight must be a finite number"),
        (dict(granularity="row"), ValueError, "granularity must be 'channel' or 'tensor', got 'row'"),
        (dict(clip="l2"), ValueError, "clip must be None, 'max' or 'mse', got 'l2'"),
        (dict(warmup_epochs=-1), ValueError, "warmup_epochs must be a non-negative integer"),
        (dict(start_epoch=1.5), ValueError, "start_epoch must be None, an epoch \\(integer >= 0\\) or a fraction of the run \\(float in \\[0, 1\\]\\), got 1.5"),
        (dict(pull_clipped=1), TypeError, "pull_clipped must be a bool, got 1"),
        (dict(snap_on_fit_end="yes"), TypeError, "snap_on_fit_end must be a bool"),
        (dict(targets="head.weight"), TypeError, "targets must be None or a list of parameter names"),
        (dict(include=5), TypeError, "include must be None, a regex string or a list of regex strings, got 5"),
        (dict(exclude="("), ValueError, "exclude pattern"),
    ],
)
def test_init_errors_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        QuantizationRegularizer(**kwargs)


def test_unknown_target_name_and_empty_model_errors():
    with pytest.raises(ValueError, match="targets names \\['nope'\\] are not parameters"):
        trainer([QuantizationRegularizer(targets=["nope"])], max_epochs=1).fit(Tiny(), loader())

    class NoTargets(Tiny):
        def __init__(self):
            super().__init__()
            self.lstm, self.conv, self.head = nn.Identity(), nn.Identity(), nn.Identity()
            self.norm = nn.LayerNorm(6)

        def configure_optimizers(self):
            return torch.optim.SGD(self.norm.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="no parameter to compress.*norm.weight.*LayerNorm"):
        trainer([QuantizationRegularizer()], max_epochs=1).fit(NoTargets(), loader())


def test_tensorboard_histograms(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer([QuantizationRegularizer(bits=4)], max_epochs=1, logger=logger).fit(Tiny(), loader())
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "compress/weights/lstm.weight_ih_l0" in tags["histograms"]
    assert "compress/grid_distance" in tags["scalars"]


class Student(pl.LightningModule):
    """A linear map learned from a teacher whose weights are ~10× the student's at init.

    The loss is scaled down, as a speech model's per-weight gradients are small late in
    training: Adam is invariant to that scale, but the regularizer's pull is not.
    """

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8, bias=False)
        with torch.no_grad():
            self.lin.weight.mul_(0.1)  # max|w| ≈ 0.035

    def training_step(self, batch, i):
        return 1e-3 * nn.functional.mse_loss(self.lin(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


@pytest.mark.parametrize("pull_clipped", [True, False])
def test_pull_clipped_holds_the_range_or_lets_it_grow(pull_clipped):
    # With the pull, weights beyond ±qmax·Δ go back to the edge level, so the range stays
    # near the first epoch's (the next Δ, computed from held weights, is no larger): a
    # max-norm constraint. Without it the task sets the range and Δ follows.
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(8, 8, generator=g)  # max|w| ≈ 3.4
    x = torch.randn(256, 8, generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x @ teacher.T), batch_size=32)
    pl.seed_everything(0)
    model = Student()
    cb = QuantizationRegularizer(bits=4, weight=1.0, clip="mse", pull_clipped=pull_clipped)
    trainer([cb], max_epochs=12).fit(model, data)
    w = model.lin.weight.detach()
    first_range = 0.035  # about max|w| at init (measured: held at 0.038; free: 1.46)
    if pull_clipped:
        assert float(w.abs().max()) < 1.5 * first_range
    else:
        assert float(w.abs().max()) > 0.3 * float(teacher.abs().max()) > 10 * first_range
        assert float(cb.scales["lin.weight"].max()) > 0.1  # Δ followed the weights
    assert torch.equal(grid.snap(w, cb.scales["lin.weight"], 4), w)  # and the end is still on the grid
