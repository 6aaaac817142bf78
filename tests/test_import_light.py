"""``import compress`` stays light, and both Lightning packages are served."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

HEAVY = ("hydra", "omegaconf", "onnx", "onnxruntime", "tensorboard", "tensorboardX")


def run_py(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env)


def test_import_compress_imports_nothing_heavy():
    proc = run_py(
        f"""
        import sys, compress
        loaded = [m for m in {HEAVY + ("torch", "pytorch_lightning", "lightning")!r} if m in sys.modules]
        assert not loaded, loaded
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_callbacks_and_targets_import_no_hydra_onnx_tensorboard():
    proc = run_py(
        f"""
        import sys, compress
        compress.QuantizationRegularizer, compress.GradualSparsifier, compress.find_targets, compress.describe_targets
        import compress.callbacks, compress.sparsity, compress.quant.penalty
        loaded = [m for m in {HEAVY!r} if m in sys.modules]
        assert not loaded, loaded
        assert "pytorch_lightning" in sys.modules  # the callbacks' own dependency
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_compress_lightning_without_lightning_says_what_to_do():
    proc = run_py(
        """
        import sys
        sys.modules["lightning"] = None  # as if the package were not installed
        sys.modules["lightning.pytorch"] = None
        import compress.lightning
        """
    )
    assert proc.returncode != 0
    assert "compress.lightning needs the 'lightning' package" in proc.stderr
    assert "pip install lightning" in proc.stderr and "from compress import QuantizationRegularizer" in proc.stderr


def tiny_module(L):
    """A small LightningModule of the given Lightning package."""

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)
            self.head = nn.Linear(6, 2)

        def training_step(self, batch, i):
            return self.head(self.lstm(batch[0])[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    return Tiny()


@pytest.mark.parametrize("flavour", ["compress.lightning", "compress"])
def test_lightning_pytorch_trainer(flavour, tmp_path):
    L = pytest.importorskip("lightning.pytorch")  # the error path above runs without it
    from compress.quant import grid

    if flavour == "compress.lightning":
        from compress.lightning import GradualSparsifier, QuantizationRegularizer

        assert issubclass(GradualSparsifier, L.Callback) and issubclass(QuantizationRegularizer, L.Callback)
    else:  # the pytorch_lightning classes, run by lightning.pytorch's Trainer by hook name
        from compress import GradualSparsifier, QuantizationRegularizer
    L.seed_everything(0)
    sp, qr = GradualSparsifier(0.5), QuantizationRegularizer(bits=4)
    model = tiny_module(L)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 5, 4)), batch_size=4)
    t = L.Trainer(
        accelerator="cpu", max_epochs=2, callbacks=[sp, qr], logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    t.fit(model, dl)
    t.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=False)
    assert sp.state_key in ckpt["callbacks"] and qr.state_key in ckpt["callbacks"]
    for n, p in model.named_parameters():
        if n in sp.masks:
            assert int((~sp.masks[n]).sum()) == int(0.5 * p.numel() + 0.5)
            assert torch.equal(grid.snap(p.detach(), qr.scales[n], 4), p.detach())
