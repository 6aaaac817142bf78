"""Default targets, include/exclude, tied parameters, and the error on an empty model."""

import pytest
import torch
from torch import nn

from compress.targets import describe_targets, find_targets


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 3)
        self.conv2 = nn.Conv2d(1, 2, 3)
        self.norm = nn.LayerNorm(8)
        self.lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=4)
        self.gru = nn.GRU(8, 8)
        self.mha = nn.MultiheadAttention(8, 2)
        self.mha_kv = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
        self.head = nn.Linear(8, 10)
        self.tied = nn.Linear(8, 10, bias=False)
        self.tied.weight = self.head.weight


def test_defaults_cover_speech_layers():
    names = {t.name: t.kind for t in find_targets(Net())}
    lstm = {f"lstm.weight_{k}_l{i}{d}" for k in ("ih", "hh", "hr") for i in (0, 1) for d in ("", "_reverse")}
    assert lstm <= set(names) and names["lstm.weight_hr_l1_reverse"] == "lstm"
    assert {"conv.weight", "conv2.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"} <= set(names)
    assert {"mha.in_proj_weight", "mha.out_proj.weight"} <= set(names)
    assert {"mha_kv.q_proj_weight", "mha_kv.k_proj_weight", "mha_kv.v_proj_weight"} <= set(names)
    assert not any(n.endswith("bias") or n.startswith(("emb", "norm")) for n in names)
    assert "tied.weight" not in names  # shared tensor appears once, under its first name
    assert names["mha.out_proj.weight"] == "linear" and names["mha.in_proj_weight"] == "attention"


def test_include_exclude():
    m = Net()
    names = [t.name for t in find_targets(m, include=r"^emb\.", exclude=[r"^lstm\.", r"mha"])]
    assert "emb.weight" in names
    assert not any(n.startswith(("lstm.", "mha")) for n in names)
    kinds = {t.name: t.kind for t in find_targets(m, include="bias$")}
    assert kinds["head.bias"] == "other"
    # exclude wins over include
    assert "emb.weight" not in [t.name for t in find_targets(m, include="emb", exclude="emb")]


def test_describe_targets_prints_and_returns():
    lines = []
    rows = describe_targets(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), print_fn=lines.append)
    assert rows == [
        {"name": "0.weight", "shape": (4, 3), "kind": "linear", "numel": 12},
        {"name": "2.weight", "shape": (2, 4), "kind": "linear", "numel": 8},
    ]
    assert any("0.weight" in s for s in lines) and "2 tensors, 20 weights" in lines[-1]


def test_nothing_to_target_lists_what_was_found():
    m = nn.Sequential(nn.LayerNorm(4), nn.Embedding(3, 4))
    with pytest.raises(ValueError, match=r"no parameter to compress.*0\.weight.*Embedding.*LayerNorm"):
        find_targets(m)
    with pytest.raises(ValueError, match="no parameter to compress"):
        find_targets(nn.Linear(2, 2), exclude=".*")


def test_bad_arguments():
    with pytest.raises(TypeError, match="include must be None, a regex string"):
        find_targets(nn.Linear(2, 2), include=3)
    with pytest.raises(ValueError, match="exclude pattern '\\(' is not a valid"):
        find_targets(nn.Linear(2, 2), exclude="(")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        find_targets(torch.ones(3))
