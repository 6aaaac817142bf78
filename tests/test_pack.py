"""The writer: sources, determinism, atomicity, refusals, summary."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

import compress
from compress.export import pack
from compress.export.sources import read_compression_state
from compress.quant import grid

pack_module = importlib.import_module("compress.export.pack")  # the attribute `pack` is the function


def checkpoint(bits=4, sparsity=0.5, regularizer=True, sparsifier=True):
    """A Lightning-style checkpoint built by hand, per ARCHITECTURE.md's contract."""
    model = torch.nn.Sequential(torch.nn.Conv1d(3, 6, 3), torch.nn.BatchNorm1d(6), torch.nn.Linear(5, 4))
    sd = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    targets = ["model.0.weight", "model.2.weight"]
    masks = {k: torch.rand(sd[k].shape) >= sparsity for k in targets}
    scales = {}
    for k in targets:
        w = sd[k] * masks[k]
        scales[k] = grid.compute_scale(w, bits)
        sd[k] = grid.snap(w, scales[k], bits)
    callbacks = {}
    if regularizer:
        callbacks["QuantizationRegularizer{'bits': 4}"] = {
            "version": 1, "bits": bits, "granularity": "channel", "clip": "max", "scales": scales,
            "epoch": 4, "weight": 0.01}
    if sparsifier:
        callbacks["GradualSparsifier{'target': 0.5}"] = {
            "version": 1, "masks": masks, "target_sparsity": sparsity, "epoch": 4}
    return {"epoch": 4, "state_dict": sd, "callbacks": callbacks}


def test_checkpoint_path_source(tmp_path):
    ckpt = checkpoint()
    torch.save(ckpt, tmp_path / "c.ckpt")
    summary = pack(tmp_path / "c.ckpt", tmp_path / "c.psq", recipe="tiny")
    rows = {r.name: r for r in summary.rows}
    assert rows["model.0.weight"].kind == "quant" and rows["model.0.bias"].kind == "raw"
    assert summary.file_bytes == os.path.getsize(tmp_path / "c.psq")
    out = compress.load(tmp_path / "c.psq")
    assert all(torch.equal(out[k], v) for k, v in ckpt["state_dict"].items())
    state = read_compression_state(ckpt)
    assert state.bits == {"model.0.weight": 4, "model.2.weight": 4} and set(state.masks) == set(state.bits)
    assert "model.0.weight" in str(summary) and "entropy bound" in str(summary)


class FakeCallback:
    def __init__(self, key, state):
        self.state_key, self._state = key, state

    def state_dict(self):
        return self._state


def test_module_with_callbacks_source(tmp_path):
    ckpt = checkpoint()
    model = torch.nn.Module()
    model.model = torch.nn.Sequential(torch.nn.Conv1d(3, 6, 3), torch.nn.BatchNorm1d(6), torch.nn.Linear(5, 4))
    model.load_state_dict(ckpt["state_dict"])
    cbs = [FakeCallback(k, v) for k, v in ckpt["callbacks"].items()] + [object()]
    pack(model, tmp_path / "m.psq", callbacks=cbs)
    torch.save(ckpt, tmp_path / "c.ckpt")
    pack(tmp_path / "c.ckpt", tmp_path / "c.psq")
    assert (tmp_path / "m.psq").read_bytes() == (tmp_path / "c.psq").read_bytes()


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    pack(checkpoint(), tmp_path / "p.psq", progress=True)
    captured = capsys.readouterr()
    assert "encoding" in captured.err and captured.out == ""


def test_sparsity_only_needs_bits(tmp_path):
    ckpt = checkpoint(regularizer=False)
    with pytest.raises(ValueError, match="bits is required"):
        pack(ckpt, tmp_path / "s.psq")
    summary = pack(ckpt, tmp_path / "s.psq", bits=8)  # post-training quantization on computed scales
    assert compress.decoder.read_file(tmp_path / "s.psq").metadata["ptq"] is True
    assert {r.name for r in summary.rows if r.kind == "quant"} == {"model.0.weight", "model.2.weight"}
    with pytest.raises(ValueError, match="masks come from it"):
        pack(ckpt, tmp_path / "s.psq", bits=8, masks={})


def test_deterministic(tmp_path):
    ckpt = checkpoint()
    pack(ckpt, tmp_path / "a.psq", metadata={"run": 1})
    script = ("import torch, sys; from compress.export import pack; "
              "pack(torch.load(sys.argv[1]), sys.argv[2], metadata={'run': 1})")
    torch.save(ckpt, tmp_path / "c.ckpt")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.ckpt"), str(tmp_path / "b.psq")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (tmp_path / "a.psq").read_bytes() == (tmp_path / "b.psq").read_bytes()


def test_atomic_when_the_write_fails_midway(tmp_path, monkeypatch):
    import compress.atomic as atomic_module

    path = tmp_path / "model.psq"
    pack(checkpoint(), path)
    old = path.read_bytes()
    real_chunks = pack_module.chunks

    def failing(*args, **kwargs):
        for i, block in enumerate(real_chunks(*args, **kwargs)):
            if i == 3:  # header, metadata and table are written; the data is not
                raise OSError("disk full")
            yield block

    monkeypatch.setattr(pack_module, "chunks", failing)
    with pytest.raises(OSError, match="disk full"):
        pack(checkpoint(bits=8), path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["model.psq"]  # no temporary file left behind
    monkeypatch.setattr(pack_module, "chunks", real_chunks)
    monkeypatch.setattr(atomic_module.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("fsync failed")))
    with pytest.raises(OSError, match="fsync"):
        pack(checkpoint(bits=8), path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["model.psq"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_nan_and_inf(tmp_path, bad):
    ckpt = checkpoint()
    ckpt["state_dict"]["model.2.weight"][1, 1] = bad
    with pytest.raises(ValueError, match=r"'model.2.weight' has NaN or Inf"):
        pack(ckpt, tmp_path / "x.psq")
    with pytest.raises(ValueError, match=r"'b' has NaN or Inf"):
        pack({"b": torch.tensor([bad])}, tmp_path / "x.psq", bits={})
    assert not (tmp_path / "x.psq").exists()


def test_refuses_off_grid_and_mask_violations(tmp_path):
    ckpt = checkpoint(sparsity=0.0)
    ckpt["state_dict"]["model.0.weight"][0, 0, 0] += 1e-3
    with pytest.raises(ValueError, match=r"'model.0.weight' is not on its 4-bit grid: element 0"):
        pack(ckpt, tmp_path / "x.psq")
    ckpt = checkpoint(sparsity=0.5)
    mask = ckpt["callbacks"]["GradualSparsifier{'target': 0.5}"]["masks"]["model.2.weight"]
    mask.view(-1)[torch.nonzero(ckpt["state_dict"]["model.2.weight"].view(-1))[0]] = False
    with pytest.raises(ValueError, match=r"'model.2.weight' has nonzero weights where its mask says pruned"):
        pack(ckpt, tmp_path / "x.psq")


def test_setting_errors_name_the_argument(tmp_path):
    sd = {"w": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="passthrough_dtype"):
        pack(sd, tmp_path / "x.psq", bits=4, passthrough_dtype="int8")
    with pytest.raises(ValueError, match=r"bits\['w'\] must be an integer in \[2, 8\]"):
        pack(sd, tmp_path / "x.psq", bits={"w": 9})
    with pytest.raises(ValueError, match="'nope', which is not in the state dict"):
        pack(sd, tmp_path / "x.psq", bits={"nope": 4})
    with pytest.raises(ValueError, match=r"scale for 'w' must have shape"):
        pack(sd, tmp_path / "x.psq", bits=4, scales={"w": torch.ones(3)})
    with pytest.raises(TypeError, match="source must be"):
        pack(42, tmp_path / "x.psq")
    with pytest.raises(TypeError, match="'c' has dtype torch.complex64"):
        pack({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "x.psq", bits={})
    with pytest.raises(ValueError, match="bits, scales and targets come from it"):
        pack(checkpoint(), tmp_path / "x.psq", bits=4)


def test_import_stays_light():
    code = ("import sys, compress, compress.export, compress.decoder; compress.load; "
            "assert not {'onnx', 'hydra', 'tensorboard'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_end_to_end_with_the_real_callbacks(tmp_path):
    """Train with both callbacks, save a Lightning checkpoint, export, load, verify."""
    import warnings

    import pytorch_lightning as pl

    from compress.cli import main

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = torch.nn.Conv1d(4, 8, 3), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 5)

        def forward(self, x):  # (B, 4, T)
            return self.fc(self.bn(self.conv(x)).mean(-1))  # (B, 5)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4, 10), torch.randint(0, 5, (16,))),
                                       batch_size=8)
    cbs = [compress.QuantizationRegularizer(bits=4, log_histograms=False),
           compress.GradualSparsifier(final_sparsity=0.5, end_epoch=2)]
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=cbs, default_root_dir=tmp_path)
    model = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    summary = pack(tmp_path / "run.ckpt", tmp_path / "a.psq")
    assert {r.name: r.sparsity for r in summary.rows if r.kind == "quant"} == {"conv.weight": 0.5, "fc.weight": 0.5}
    pack(model, tmp_path / "b.psq", callbacks=cbs)
    assert (tmp_path / "a.psq").read_bytes() == (tmp_path / "b.psq").read_bytes()
    rebuilt = Tiny().eval()
    rebuilt.load_state_dict(compress.load(tmp_path / "a.psq"), strict=True)
    x = torch.randn(2, 4, 10)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))  # the trained weights were snapped: identical
    assert main(["verify", str(tmp_path / "a.psq"), str(tmp_path / "run.ckpt")]) == 0
