"""Exact-count, monotone magnitude masks."""

import pytest
import torch

from compress.sparsity.masks import apply_masks_, magnitude_masks, mask_sparsity


@pytest.mark.parametrize("s", [0.0, 0.1, 0.33, 0.5, 0.9, 0.999])
def test_layer_scope_exact_count_with_ties(s):
    weights = {"a": torch.ones(17, 13), "b": torch.randn(64).round(), "c": torch.zeros(5)}  # heavy ties
    masks = magnitude_masks(weights, s)
    for n, w in weights.items():
        assert masks[n].shape == w.shape and masks[n].dtype == torch.bool
        assert int((~masks[n]).sum()) == int(s * w.numel() + 0.5)


def test_prunes_smallest_and_global_scope():
    a = torch.tensor([5.0, 1.0, 3.0, 0.5])
    b = torch.tensor([[0.1, 4.0], [0.2, 6.0]])
    g = magnitude_masks({"a": a, "b": b}, 0.5, "global")
    assert g["a"].tolist() == [True, False, True, False]
    assert g["b"].tolist() == [[False, True], [False, True]]
    assert mask_sparsity(g) == 0.5
    lm = magnitude_masks({"a": a, "b": b}, 0.5, "layer")
    assert lm["a"].tolist() == [True, False, True, False] and lm["b"].tolist() == [[False, True], [False, True]]


def test_global_exact_count_random():
    ws = {f"w{i}": torch.randn(i + 3, 7) for i in range(5)}
    m = magnitude_masks(ws, 0.37, "global")
    n = sum(w.numel() for w in ws.values())
    assert sum(int((~v).sum()) for v in m.values()) == int(0.37 * n + 0.5)


def test_monotone_previous_mask_stays_pruned():
    w = torch.randn(100)
    m1 = magnitude_masks({"w": w}, 0.3)
    w2 = torch.randn(100) * 10  # weights move: old pruned ones would now be large
    m2 = magnitude_masks({"w": w2}, 0.5, previous=m1)
    assert not (m2["w"] & ~m1["w"]).any()
    assert int((~m2["w"]).sum()) == 50
    m3 = magnitude_masks({"w": w2}, 0.1, previous=m2)  # lower target keeps the old mask
    assert torch.equal(m3["w"], m2["w"])


def test_apply_masks_in_place():
    p = torch.nn.Parameter(torch.randn(4, 4))
    m = magnitude_masks({"p": p.detach()}, 0.5)["p"]
    apply_masks_([p], [m])
    assert (p.detach()[~m] == 0).all() and (p.detach()[m] != 0).all()


def test_bad_args():
    with pytest.raises(ValueError, match="scope must be"):
        magnitude_masks({"a": torch.ones(3)}, 0.5, "row")
    with pytest.raises(ValueError, match="sparsity must be a number in"):
        magnitude_masks({"a": torch.ones(3)}, 1.0)


def test_selection_equals_stable_sort_oracle():
    from compress.sparsity.masks import _prune_smallest

    for _ in range(200):
        n = int(torch.randint(1, 120, ()))
        scores = torch.randint(-1, 4, (n,)).float()  # many ties, and "previously pruned" -1s
        k = int(torch.randint(0, n + 1, ()))
        ref = torch.ones(n, dtype=torch.bool)
        ref[torch.sort(scores, stable=True).indices[:k]] = False
        assert torch.equal(_prune_smallest(scores, k), ref), (scores, k)
