"""Two CPU ranks under strategy="ddp" hold identical masks and scales.

The fit runs in a subprocess (Lightning's DDP launcher re-executes the script per rank);
each rank perturbs its own weights at every epoch start so that masks or scales computed
independently per rank would differ; the callbacks must compute them on rank 0 and
broadcast. Each rank dumps what it holds; the test compares the dumps.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    import pytorch_lightning as pl
    from torch import nn
    from compress import GradualSparsifier, QuantizationRegularizer

    out = sys.argv[1]
    # "noise": ranks diverge; "block": the same with 1x4 block masks; "weights": no noise,
    # the prox form, final weights
    form = sys.argv[2] if len(sys.argv) > 2 else "noise"

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 12, batch_first=True)
            self.head = nn.Linear(12, 3)

        def forward(self, x):  # (B, T, F)
            return self.head(self.lstm(x)[0])

        def training_step(self, batch, i):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class RankNoise(pl.Callback):
        # Runs before the compression callbacks: ranks' weights diverge slightly.
        def on_train_epoch_start(self, trainer, pl_module):
            g = torch.Generator().manual_seed(100 + trainer.global_rank)
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)

    class Dump(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            sp, qr = trainer.callbacks[1], trainer.callbacks[2]
            torch.save({"masks": sp.state_dict()["masks"], "scales": qr.state_dict()["scales"]},
                       os.path.join(out, f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt"))

    class DumpWeights(pl.Callback):
        def on_fit_end(self, trainer, pl_module):
            torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                       os.path.join(out, f"rank{trainer.global_rank}_weights.pt"))

    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 5, 6, generator=g), torch.randn(32, 5, 3, generator=g))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RankNoise(), GradualSparsifier(final_sparsity=0.5, block=(1, 4) if form == "block" else None),
                   QuantizationRegularizer(bits=4, snap_on_fit_end=False), Dump()] if form != "weights" else
                  [pl.Callback(), GradualSparsifier(final_sparsity=0.5),
                   QuantizationRegularizer(bits=4, mode="prox", start_epoch=0.0, snap_on_fit_end=False),
                   Dump(), DumpWeights()],
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(ds, batch_size=4))
    """
)


@pytest.mark.ddp
@pytest.mark.parametrize("form", ["noise", "block"])
def test_two_ranks_hold_identical_masks_and_scales(tmp_path, form):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), form], capture_output=True, text=True, timeout=120, env=env,
        cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for epoch in range(3):
        r0 = torch.load(tmp_path / f"rank0_epoch{epoch}.pt")
        r1 = torch.load(tmp_path / f"rank1_epoch{epoch}.pt")
        assert r0["masks"].keys() == r1["masks"].keys() and len(r0["masks"]) == 3
        for n in r0["masks"]:
            assert torch.equal(r0["masks"][n], r1["masks"][n]), (epoch, n)
            assert torch.equal(r0["scales"][n], r1["scales"][n]), (epoch, n)
    assert (~r0["masks"]["lstm.weight_hh_l0"]).float().mean() == pytest.approx(0.5, abs=0.01)
    if form == "block":  # whole 1x4 blocks of consecutive inputs (the last one of 6 inputs ragged)
        for n, m in r0["masks"].items():
            m = m.reshape(m.shape[0], -1)
            for start in range(0, m.shape[1], 4):
                part = m[:, start:start + 4]
                assert (part.all(1) | (~part).all(1)).all(), (n, start)


@pytest.mark.ddp
def test_two_ranks_end_with_identical_weights_under_the_prox_form(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "weights"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = torch.load(tmp_path / "rank0_weights.pt"), torch.load(tmp_path / "rank1_weights.pt")
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    r0 = torch.load(tmp_path / "rank0_epoch2.pt")
    for n, s in r0["scales"].items():  # ended on the grid by the prox step alone (no fit-end snap)
        from compress.quant import grid

        assert torch.equal(w0[n], grid.snap(w0[n], s, 4)), n
