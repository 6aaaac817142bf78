"""The decoupled forms of QuantizationRegularizer (prox and hard) and the fake-quant baseline.

Oracles: the closed form of the prox step, ``grid.snap`` for ρ = 1, an identical run
without the callback for the optimizer's own step, exact zeros for masked weights.
"""

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from compress import GradualSparsifier, QuantizationRegularizer
from compress.callbacks.fake_quant import FakeQuantQAT
from compress.callbacks.quant_regularizer import default_mode
from compress.export.sources import read_compression_state
from compress.quant import grid
from compress.quant.prox import prox_step_, rho_at


class Tiny(pl.LightningModule):
    def __init__(self, opt="adam", lr=0.01):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)
        self.opt, self.lr = opt, lr
        self.outputs = []

    def forward(self, x):  # (B, T, F)
        return self.head(self.lstm(x)[0])  # (B, T, 3)

    def training_step(self, batch, i):
        out = self(batch[0])
        self.outputs.append(out.detach().clone())
        return nn.functional.mse_loss(out, batch[1])

    def configure_optimizers(self):
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.opt]
        return cls(self.parameters(), lr=self.lr)


class TwoOptimizers(Tiny):
    """Manual optimization with one optimizer per submodule."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, i):
        opts = self.optimizers()
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        for o in opts:
            o.zero_grad()
        self.manual_backward(loss)
        for o in opts:
            o.step()

    def configure_optimizers(self):
        return [torch.optim.Adam(self.lstm.parameters(), lr=0.01), torch.optim.SGD(self.head.parameters(), lr=0.05)]


def loader(n=24, batch=8):
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(n, 5, 6, generator=g), torch.randn(n, 5, 3, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=batch)


def fit(model, callbacks, max_epochs=2, **kw):
    t = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw)
    t.fit(model, loader())
    return t


class Probe(pl.Callback):
    """Weights after each optimizer step, before any other callback's batch-end hook runs."""

    def __init__(self):
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


TARGETS = ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight")


def test_rho_schedule_is_log_linear_and_ends_at_one():
    assert rho_at(0.49, 0.5, 1e-4) == 0.0
    assert rho_at(0.5, 0.5, 1e-4) == pytest.approx(1e-4)
    assert rho_at(0.75, 0.5, 1e-4) == pytest.approx(1e-2)
    assert rho_at(1.0, 0.5, 1e-4) == 1.0
    values = [rho_at(p / 100, 0.2, 1e-3) for p in range(101)]
    assert values == sorted(values)  # monotone
    assert rho_at(0.0, 0.0, 1e-3) == pytest.approx(1e-3)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.999])
def test_prox_step_is_its_closed_form(rho):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 10, generator=g, dtype=torch.float64)
    s = grid.compute_scale(w, 4, "channel", "mse").to(torch.float64)
    step = grid.broadcast_scale(s, w)
    expected = w - rho * (w - torch.clamp(torch.round(w / step), -7, 7) * step)
    got = prox_step_(w.clone(), step, 1.0 / step, 7, rho)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_step_after_the_optimizer_is_the_closed_form_and_forward_untouched():
    # Same seed, same data: the plain run is the oracle for the optimizer's own step.
    pl.seed_everything(0)
    plain = Tiny()
    ours = Tiny()
    ours.load_state_dict(plain.state_dict())
    cb = QuantizationRegularizer(bits=4, mode="prox", start_epoch=0.0, rho_min=0.05, snap_on_fit_end=False)
    probe_plain, before_cb, after_cb = Probe(), Probe(), Probe()
    fit(plain, [probe_plain], max_epochs=1, limit_train_batches=2)
    fit(ours, [before_cb, cb, after_cb], max_epochs=1, limit_train_batches=2)
    assert torch.equal(plain.outputs[0], ours.outputs[0])  # forward of the first batch: identical
    rho = rho_at(1 / 2, 0.0, 0.05)  # after step 1 of 2
    assert 0.2 < rho < 0.25
    for n in TARGETS:
        w = before_cb.after_step[0][n]
        assert torch.equal(w, probe_plain.after_step[0][n])  # the optimizer's step is the plain one
        s = grid.broadcast_scale(cb.scales[n], w)
        expected = (1 - rho) * w + rho * torch.clamp(torch.round(w / s), -7, 7) * s
        assert not torch.equal(expected, w)
        torch.testing.assert_close(after_cb.after_step[0][n], expected, rtol=0, atol=1e-7)
        # the last step is ρ = 1: the weights are on the grid without snap_on_fit_end
        last = after_cb.after_step[1][n]
        assert torch.equal(last, grid.snap(before_cb.after_step[1][n], cb.scales[n], 4))
    for n in dict(ours.named_parameters()):  # non-targets: exactly the plain run's
        if n not in TARGETS:
            assert torch.equal(before_cb.after_step[0][n], after_cb.after_step[0][n]), n


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("mode", ["prox", "hard", "relax"])
def test_run_ends_on_the_grid_by_training_alone_with_masks_exact(opt, mode):
    pl.seed_everything(0)
    model = Tiny(opt)
    sp = GradualSparsifier(final_sparsity=0.5)
    cb = QuantizationRegularizer(bits=3, mode=mode, start_epoch=0.3, hard_every=2, snap_on_fit_end=False)
    fit(model, [sp, cb], max_epochs=3)
    params = dict(model.named_parameters())
    for n in TARGETS:
        w = params[n].detach()
        assert torch.equal(w, grid.snap(w, cb.scales[n], 3)), n  # on the grid without the fit-end snap
        assert torch.equal(w[~sp.masks[n]], torch.zeros_like(w[~sp.masks[n]])), n  # pruned: exact zeros
        assert (w[sp.masks[n]] != 0).float().mean() > 0.5  # the survivors are not all rounded away


def test_rho_one_is_snap_and_pull_before_start_is_zero():
    pl.seed_everything(0)
    model = Tiny()
    cb = QuantizationRegularizer(bits=4, mode="prox", start_epoch=0.99, snap_on_fit_end=False)
    probe = Probe()
    fit(model, [probe, cb], max_epochs=2)
    assert cb.rho_at_step(1) == 0.0 and cb.rho_at_step(cb._total_steps) == 1.0
    params = dict(model.named_parameters())
    for n in TARGETS:
        w_last_opt = probe.after_step[-1][n]  # the optimizer's last step, before the prox step
        assert torch.equal(params[n].detach(), grid.snap(w_last_opt, cb.scales[n], 4))


def test_several_optimizers_and_manual_optimization():
    pl.seed_everything(0)
    model = TwoOptimizers()
    cb = QuantizationRegularizer(bits=4, mode="prox", start_epoch=0.5, snap_on_fit_end=False)
    fit(model, [cb], max_epochs=2)
    params = dict(model.named_parameters())
    for n in TARGETS:
        assert torch.equal(params[n].detach(), grid.snap(params[n].detach(), cb.scales[n], 4)), n


def test_defaults_state_and_version_1():
    assert default_mode(8) == default_mode(7) == "grad"
    assert all(default_mode(b) == "relax" for b in range(2, 7))
    assert QuantizationRegularizer(bits=4).mode == "relax" and QuantizationRegularizer(bits=4).start_epoch == 0.0
    assert QuantizationRegularizer(bits=4, mode="prox").start_epoch == 0.5
    assert QuantizationRegularizer(bits=4, weight=0.1).mode == "grad"  # λ is the gradient form's setting
    with pytest.raises(ValueError, match="weight \\(λ\\) applies to mode='grad' only"):
        QuantizationRegularizer(bits=4, mode="prox", weight=0.1)
    with pytest.raises(ValueError, match="mode must be None, 'grad', 'prox', 'hard' or 'relax', got"):
        QuantizationRegularizer(mode="ste")
    with pytest.raises(ValueError, match="rho_min must be a number in \\(0, 1\\), got 0"):
        QuantizationRegularizer(mode="prox", rho_min=0)
    with pytest.raises(ValueError, match="hard_every must be an integer >= 1, got 0"):
        QuantizationRegularizer(mode="hard", hard_every=0)
    pl.seed_everything(0)
    cb = QuantizationRegularizer(bits=4, mode="prox")
    fit(Tiny(), [cb], max_epochs=1)
    state = cb.state_dict()
    assert state["version"] == 2 and state["mode"] == "prox" and "lambda" in state
    fresh = QuantizationRegularizer(bits=4, mode="prox")
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.scales[n], cb.scales[n]) for n in cb.scales)
    with pytest.raises(ValueError, match="mode='prox', this callback has 'grad'"):
        QuantizationRegularizer(bits=4, weight=0.1).load_state_dict(state)
    # a version-1 state (the gradient form, λ under "weight") still loads, and exports
    v1 = {"version": 1, "bits": 4, "granularity": "channel", "clip": "mse", "scales": state["scales"],
          "epoch": 0, "weight": 0.25, "snapped": True}
    old = QuantizationRegularizer(bits=4, weight=0.1)
    old.load_state_dict(v1)
    assert old.state_dict()["lambda"] == 0.25 and old.state_dict()["version"] == 2
    ck = read_compression_state({"state_dict": {}, "callbacks": {"QuantizationRegularizer{}": v1}})
    assert ck.bits == {n: 4 for n in state["scales"]}


def test_relative_start_follows_max_epochs():
    cb = QuantizationRegularizer(bits=8, weight=1.0, start_epoch=0.5)
    assert [cb.lambda_at(e, max_epochs=10) for e in (4, 5)] == [0.0, 1.0]
    assert [cb.lambda_at(e, max_epochs=20) for e in (9, 10)] == [0.0, 1.0]
    prox = QuantizationRegularizer(bits=4, mode="prox", start_epoch=3)
    assert prox.start_fraction(max_epochs=6) == 0.5 and prox.start_fraction(max_epochs=12) == 0.25


def test_fake_quant_forward_on_the_grid_gradient_straight_through():
    pl.seed_everything(0)
    model = Tiny("sgd", lr=0.0)  # lr 0: weights stay, so the forward weights are easy to check

    class SeeForward(pl.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            self.w = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.w_opt = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fq, see = FakeQuantQAT(bits=4), SeeForward()
    fit(model, [fq, see], max_epochs=1, limit_train_batches=1)
    for n in TARGETS:
        s = fq.scales[n]
        assert torch.equal(see.w[n], grid.snap(before[n], s, 4))  # forward ran on snap(w)
        assert torch.equal(see.w_opt[n], before[n])  # the optimizer steps the float master weights
    state = fq.state_dict()
    ck = read_compression_state({"state_dict": {}, "callbacks": {fq.state_key: state}})
    assert ck.has_regularizer and ck.bits == {n: 4 for n in TARGETS}
    for n, p in model.named_parameters():  # after fit: snapped with the last grid, exportable
        if n in TARGETS:
            assert torch.equal(p.detach(), grid.snap(p.detach(), fq.scales[n], 4))


def test_fake_quant_trains_and_masks_stay_zero():
    pl.seed_everything(0)
    model = Tiny("adam")
    sp = GradualSparsifier(final_sparsity=0.5)
    fit(model, [sp, FakeQuantQAT(bits=4)], max_epochs=2)
    params = dict(model.named_parameters())
    for n in TARGETS:
        w = params[n].detach()
        assert torch.equal(w[~sp.masks[n]], torch.zeros_like(w[~sp.masks[n]]))
        assert math.isfinite(float(w.abs().sum()))


def test_relax_steps_latent_weights_and_the_model_holds_their_relaxation():
    pl.seed_everything(0)
    model = Tiny()
    cb = QuantizationRegularizer(bits=4, mode="relax", start_epoch=0.0, rho_min=0.05, snap_on_fit_end=False)

    class Seen(pl.Callback):  # after the regularizer's batch end: the model's w and the latent z
        def __init__(self):
            self.w, self.z = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.w.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
            self.z.append({n: t.latent.clone() for n, t in cb._t.items()})

    seen = Seen()
    fit(model, [cb, seen], max_epochs=1, limit_train_batches=3)
    for i in range(2):
        rho = rho_at((i + 1) / 3, 0.0, 0.05)
        for n in TARGETS:
            z, w = seen.z[i][n], seen.w[i][n]
            s = grid.broadcast_scale(cb.scales[n], z)
            expected = (1 - rho) * z + rho * torch.clamp(torch.round(z / s), -7, 7) * s
            torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)
            assert not torch.equal(w, z)
    for n in TARGETS:  # the last step: w = snap(z)
        assert torch.equal(seen.w[2][n], grid.snap(seen.z[2][n], cb.scales[n], 4))
    state = cb.state_dict()
    assert set(state["latent"]) == set(TARGETS) and state["mode"] == "relax"
