"""Block-structured masks (``magnitude_masks(block=...)``, ``GradualSparsifier(block=...)``)
against a brute-force oracle: whole blocks, the lowest-RMS blocks first, the count met to
within one block, monotone, ragged edges, global scope, and the callback's state."""

from __future__ import annotations

import itertools

import pytest
import torch

from compress import GradualSparsifier
from compress.sparsity.masks import magnitude_masks


def blocks_of(shape, block):
    """Oracle: the list of (flat indices) of every block, row-major over block positions."""
    rows = shape[0] if len(shape) > 1 else 1
    cols = int(torch.Size(shape).numel()) // rows
    br, bc = block
    out = []
    for r0, c0 in itertools.product(range(0, rows, br), range(0, cols, bc)):
        out.append([r * cols + c for r in range(r0, min(r0 + br, rows)) for c in range(c0, min(c0 + bc, cols))])
    return out


def oracle(w, sparsity, block):
    """Sort blocks by (RMS, index); pick the k whose pruned count is closest to target."""
    flat = w.flatten().tolist()
    bl = blocks_of(w.shape, block)
    rms = [(sum(flat[i] ** 2 for i in b) / len(b)) ** 0.5 for b in bl]
    order = sorted(range(len(bl)), key=lambda j: (rms[j], j))
    target = int(sparsity * w.numel() + 0.5)
    sums = [0]
    for j in order:
        sums.append(sums[-1] + len(bl[j]))
    k = min(range(len(sums)), key=lambda i: (abs(sums[i] - target), i))
    keep = torch.ones(w.numel(), dtype=torch.bool)
    for j in order[:k]:
        keep[bl[j]] = False
    return keep.view(w.shape)


@pytest.mark.parametrize("shape,block", [((12, 32), (1, 16)), ((13, 35), (1, 16)), ((10, 9), (4, 4)),
                                         ((8, 6, 5), (2, 8)), ((7,), (1, 3))])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_equals_the_oracle_and_keeps_whole_blocks(shape, block, sparsity):
    torch.manual_seed(sum(shape))
    w = torch.randn(*shape)
    m = magnitude_masks({"w": w}, sparsity, block=block)["w"]
    assert torch.equal(m, oracle(w, sparsity, block))
    for b in blocks_of(w.shape, block):
        assert len(set(m.flatten()[b].tolist())) == 1  # a block is kept or pruned whole
    largest = block[0] * block[1]
    assert abs(int((~m).sum()) - int(sparsity * w.numel() + 0.5)) <= largest / 2


def test_monotone_and_previous_partial_blocks_go_first():
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    a = magnitude_masks({"w": w}, 0.25, block=(1, 16))["w"]
    w2 = w + torch.randn_like(w) * 2  # the ranking changes
    b = magnitude_masks({"w": w2}, 0.5, block=(1, 16), previous={"w": a})["w"]
    assert not (b & ~a).any()  # nothing pruned comes back
    # A single-weight mask from before: its blocks are pruned first.
    prev = torch.ones(8, 32, dtype=torch.bool)
    prev[3, 20] = False
    c = magnitude_masks({"w": w}, 1 / 16, block=(1, 16), previous={"w": prev})["w"]
    assert not c[3, 16:].any() and int((~c).sum()) == 16


def test_global_scope_ranks_blocks_across_tensors():
    big, small = torch.full((4, 16), 5.0), torch.full((4, 16), 0.1)
    m = magnitude_masks({"big": big, "small": small}, 0.5, scope="global", block=(1, 16))
    assert m["big"].all() and not m["small"].any()


@pytest.mark.parametrize("bad", [(0, 4), (1,), "1x16", (1, 2.5), (True, 4)])
def test_bad_block_is_named(bad):
    with pytest.raises(ValueError, match="block must be None or a"):
        magnitude_masks({"w": torch.randn(4, 4)}, 0.5, block=bad)
    with pytest.raises(ValueError, match="block must be None or a"):
        GradualSparsifier(0.5, block=bad)


def test_callback_state_holds_the_block_and_refuses_another():
    cb = GradualSparsifier(0.5, block=(1, 16))
    state = cb.state_dict()
    assert state["block"] == [1, 16]
    GradualSparsifier(0.5, block=[1, 16]).load_state_dict(state)
    with pytest.raises(ValueError, match="block"):
        GradualSparsifier(0.5).load_state_dict(state)
    assert "block" not in GradualSparsifier(0.5).state_key  # states saved before the option keep their key
    assert "block" in cb.state_key


def test_fit_reaches_the_target_in_whole_blocks():
    import pytorch_lightning as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Toy(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(48, 20)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self.lin(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 48), torch.randn(32, 20)), batch_size=8)
    model = Toy()
    trainer = pl.Trainer(max_epochs=3, callbacks=[GradualSparsifier(0.75, block=(1, 16))], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    w = model.lin.weight.detach()
    assert int((w == 0).sum()) == int(0.75 * w.numel())  # 20 x 3 blocks of 16: 45 pruned exactly
    zero_blocks = (w.view(20, 3, 16) == 0).all(-1)
    assert int(zero_blocks.sum()) == 45
