"""GradualSparsifier in a real Trainer: schedule, exact counts, monotone masks that
survive momentum / weight decay / AdamW, composition with the regularizer, state, errors."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from compress import GradualSparsifier, QuantizationRegularizer
from compress.quant import grid
from compress.sparsity.schedule import sparsity_at


class Tiny(pl.LightningModule):
    def __init__(self, opt="sgd"):
        super().__init__()
        self.lstm = nn.LSTM(6, 10, batch_first=True, bidirectional=True)
        self.head = nn.Linear(20, 3)
        self.opt = opt
        self.sparsifier = None  # set by a test to check weights at forward time
        self.forward_violations = 0

    def forward(self, x):  # (B, T, F)
        return self.head(self.lstm(x)[0])  # (B, T, 3)

    def training_step(self, batch, i):
        if self.sparsifier is not None:  # what the forward pass sees: pruned weights are 0
            for n, p in self.named_parameters():
                m = self.sparsifier.masks.get(n)
                if m is not None and (p.detach()[~m] != 0).any():
                    self.forward_violations += 1
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        if self.opt == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=0.1)
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)


def loader(n=24, batch=8):
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(n, 5, 6, generator=g), torch.randn(n, 5, 3, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=batch)


def trainer(callbacks, max_epochs=3, **kw):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw,
    )


class EpochRecorder(pl.Callback):
    """Masks and targets seen by later callbacks, per epoch and after every batch."""

    def __init__(self, sp):
        self.sp, self.masks, self.targets, self.after_batch = sp, [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.masks.append(self.sp.masks)
        self.targets.append(self.sp.state_dict()["target_sparsity"])

    def on_train_batch_end(self, trainer, pl_module, *args):
        bad = sum(int((p.detach()[~self.sp.masks[n]] != 0).sum()) for n, p in pl_module.named_parameters() if n in self.sp.masks)
        self.after_batch.append(bad)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_schedule_and_exact_final_sparsity(scope):
    pl.seed_everything(0)
    sp = GradualSparsifier(final_sparsity=0.7, scope=scope)
    rec = EpochRecorder(sp)
    model = Tiny()
    trainer([sp, rec], max_epochs=4).fit(model, loader())
    assert rec.targets == [pytest.approx(sparsity_at(e, 0.7, 0, 3)) for e in range(4)]
    assert rec.targets[0] == 0.0 and rec.targets[-1] == 0.7
    targets = {n: p for n, p in model.named_parameters() if n in sp.masks}
    assert len(targets) == 5  # weight_ih/hh x 2 directions + head; no biases
    if scope == "layer":
        for n, p in targets.items():
            k = int(0.7 * p.numel() + 0.5)
            assert int((~sp.masks[n]).sum()) == k, n
            assert int((p.detach() == 0).sum()) == k, n  # exactly: no extra zeros either
    else:
        total = sum(p.numel() for p in targets.values())
        assert sum(int((~m).sum()) for m in sp.masks.values()) == int(0.7 * total + 0.5)
        assert sum(int((p.detach() == 0).sum()) for p in targets.values()) == int(0.7 * total + 0.5)
    for before, after in zip(rec.masks[1:], rec.masks[2:]):  # monotone: pruned stays pruned
        assert all(not (after[n] & ~before[n]).any() for n in before)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_masks_hold_under_momentum_and_weight_decay(opt):
    pl.seed_everything(0)
    sp = GradualSparsifier(final_sparsity=0.5, start_epoch=0, end_epoch=1)
    rec = EpochRecorder(sp)
    model = Tiny(opt)
    model.sparsifier = sp
    trainer([sp, rec], max_epochs=3).fit(model, loader())
    assert rec.after_batch and all(v == 0 for v in rec.after_batch)
    assert model.forward_violations == 0
    # the optimizer really would have revived them: momentum buffers / moments are nonzero there
    lstm_w = model.lstm.weight_hh_l0
    assert lstm_w.grad is not None and (lstm_w.grad[~sp.masks["lstm.weight_hh_l0"]] != 0).any()


def test_with_regularizer_zeros_stay_and_are_grid_points():
    pl.seed_everything(0)
    sp = GradualSparsifier(final_sparsity=0.6)
    reg = QuantizationRegularizer(bits=4, weight=1.0)
    model = Tiny("adamw")
    trainer([sp, reg], max_epochs=3).fit(model, loader())
    for n, p in model.named_parameters():
        if n in sp.masks:
            w = p.detach()
            assert (w[~sp.masks[n]] == 0).all()
            assert int((~sp.masks[n]).sum()) == int(0.6 * w.numel() + 0.5)
            assert torch.equal(grid.snap(w, reg.scales[n], 4), w)  # on the grid after snapping
            kept = w[sp.masks[n]]
            # zeros do not shape Δ: per tensor, the same step as from the kept weights alone
            for clip in ("max", "mse"):
                assert torch.equal(grid.compute_scale(w, 4, "tensor", clip), grid.compute_scale(kept, 4, "tensor", clip))


def test_state_contract_progress_bar_and_two_instances():
    pl.seed_everything(0)
    a = GradualSparsifier(final_sparsity=0.5, include=None, exclude=r"^head\.")
    b = GradualSparsifier(final_sparsity=0.3, targets=["head.weight"], log_prefix="head")
    assert a.state_key.startswith("GradualSparsifier") and b.state_key.startswith("GradualSparsifier")
    assert a.state_key != b.state_key
    t = trainer([a, b], max_epochs=2)
    t.fit(Tiny(), loader())
    sa = a.state_dict()
    assert sa["version"] == 1 and sa["epoch"] == 1 and sa["target_sparsity"] == 0.5
    assert "head.weight" not in sa["masks"] and list(b.state_dict()["masks"]) == ["head.weight"]
    for m in sa["masks"].values():
        assert m.dtype == torch.bool and m.device.type == "cpu"
    sa["masks"]["lstm.weight_ih_l0"].fill_(True)  # the saved copy never aliases the live mask
    assert not a.masks["lstm.weight_ih_l0"].all()
    assert "compress/sparsity" in t.progress_bar_metrics
    assert float(t.callback_metrics["compress/sparsity_target"]) == 0.5
    assert float(t.callback_metrics["head/sparsity_target"]) == pytest.approx(0.3)
    assert float(t.callback_metrics["head/sparsity"]) == pytest.approx(int(0.3 * 60 + 0.5) / 60)
    assert "compress/sparsity/lstm.weight_ih_l0" in t.callback_metrics


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(final_sparsity=1.0), "final_sparsity must be a number in \\[0, 1\\), got 1.0"),
        (dict(final_sparsity=-0.2), "final_sparsity must be a number"),
        (dict(start_epoch=-1), "start_epoch must be a non-negative integer"),
        (dict(start_epoch=3, end_epoch=2), "end_epoch must be None or an integer >= start_epoch \\(3\\), got 2"),
        (dict(scope="row"), "scope must be 'layer' or 'global', got 'row'"),
        (dict(schedule="exp"), "schedule must be 'cubic', 'linear' or a callable progress -> fraction, got 'exp'"),
        (dict(initial_sparsity=0.6, final_sparsity=0.5), "initial_sparsity must be <= final_sparsity"),
    ],
)
def test_init_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradualSparsifier(**kwargs)


def test_unbounded_trainer_needs_end_epoch():
    t = trainer([GradualSparsifier(0.5)], max_epochs=-1, max_steps=2)
    with pytest.raises(ValueError, match="end_epoch must be given when the trainer's max_epochs is unbounded"):
        t.fit(Tiny(), loader())


@pytest.mark.parametrize("strategy", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_sharded_strategies_are_refused_with_a_clear_error(strategy):
    from types import SimpleNamespace

    fake = SimpleNamespace(strategy=type(strategy, (), {})(), max_epochs=3)
    for cb in (GradualSparsifier(0.5), QuantizationRegularizer()):
        with pytest.raises(ValueError, match=f"needs full \\(unsharded\\) weights.*{strategy}.*strategy='ddp'"):
            cb.setup(fake, Tiny(), "fit")


@pytest.mark.parametrize(
    "saved_kwargs,current_kwargs,setting",
    [
        (dict(final_sparsity=0.5), dict(final_sparsity=0.8), "final_sparsity=0.5, this callback has 0.8"),
        (dict(schedule="cubic"), dict(schedule="linear"), "schedule='cubic', this callback has 'linear'"),
        (dict(start_epoch=1), dict(start_epoch=2), "start_epoch=1, this callback has 2"),
        (dict(end_epoch=4), dict(end_epoch=None), "end_epoch=4, this callback has None"),
        (dict(scope="layer"), dict(scope="global"), "scope='layer', this callback has 'global'"),
        (dict(initial_sparsity=0.1), dict(initial_sparsity=0.2), "initial_sparsity=0.1, this callback has 0.2"),
    ],
)
def test_load_state_refuses_other_settings(saved_kwargs, current_kwargs, setting):
    state = GradualSparsifier(**saved_kwargs).state_dict()
    with pytest.raises(ValueError, match=f"GradualSparsifier checkpoint was trained with {setting}"):
        GradualSparsifier(**current_kwargs).load_state_dict(state)


def test_load_state_checks_only_the_settings_a_state_has():
    from compress import checkpoint as contract

    state = GradualSparsifier(0.5, start_epoch=1).state_dict()
    assert set(contract.SPARSIFIER_KEYS + contract.SPARSIFIER_SETTINGS) == set(state)
    for key in ("initial_sparsity", "start_epoch", "end_epoch"):  # a state from before they were saved
        del state[key]
    cb = GradualSparsifier(0.5, start_epoch=3)
    cb.load_state_dict(state)
    assert cb.masks == {}
    with pytest.raises(ValueError, match=r"GradualSparsifier state version must be one of \(1,\), got 7"):
        cb.load_state_dict(dict(state, version=7))
