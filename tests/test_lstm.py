"""``run_lstm`` against the packed ``nn.LSTM`` it replaces: outputs and gradients on every
frame within a length, for one and two layers, one and two directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from compress.models import CTCLSTM
from compress.models.lstm import reverse_within, run_lstm


def packed_lstm(lstm, x, lengths):
    p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = lstm(p)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (1, True), (2, True), (3, True)])
def test_equals_the_packed_lstm_outputs_and_gradients(layers, bidirectional):
    torch.manual_seed(layers)
    lstm = nn.LSTM(6, 5, layers, batch_first=True, bidirectional=bidirectional).eval()
    x = torch.randn(4, 9, 6, requires_grad=True)
    lengths = torch.tensor([9, 4, 1, 7])
    valid = (torch.arange(9)[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1)
    ref, out = packed_lstm(lstm, x, lengths), run_lstm(lstm, x, lengths)
    torch.testing.assert_close(out, ref)  # padding frames too: zeros in both
    g = torch.randn_like(ref) * valid
    wrt = [x, *lstm.parameters()]
    for a, b in zip(torch.autograd.grad((ref * g).sum(), wrt), torch.autograd.grad((out * g).sum(), wrt)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_padding_does_not_reach_the_frames():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, 2, batch_first=True, bidirectional=True).eval()
    x = torch.randn(1, 5, 3)
    padded = torch.cat([x, torch.randn(1, 4, 3) * 100], dim=1)
    torch.testing.assert_close(run_lstm(lstm, padded, torch.tensor([5]))[:, :5], run_lstm(lstm, x, torch.tensor([5])))


def test_reverse_within_is_its_own_inverse_and_keeps_padding():
    x = torch.arange(10.0).reshape(2, 5, 1)
    y = reverse_within(x, torch.tensor([3, 5]))
    assert y[:, :, 0].tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]
    torch.testing.assert_close(reverse_within(y, torch.tensor([3, 5])), x)


def test_ctc_lstm_forward_matches_the_packed_path_the_exporter_traces(monkeypatch):
    torch.manual_seed(0)
    m = CTCLSTM(hidden_size=16, num_layers=2, conv_channels=16).eval()
    x, n = torch.randn(3, 40, 80), torch.tensor([40, 25, 9])
    lp, lengths = m(x, n)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)  # the export path: packed nn.LSTM
    lp_ref, _ = m(x, n)
    torch.testing.assert_close(lp, lp_ref)  # every frame, padding included


def test_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="batch_first"):
        run_lstm(nn.LSTM(3, 4), torch.zeros(1, 2, 3), torch.tensor([2]))


def test_torch_pruning_reparametrization_is_recomputed_every_call():
    """torch.nn.utils.prune (what Lightning's ModelPruning uses) sets ``weight = orig * mask``
    in a forward pre-hook; run_lstm must run it, or a second backward reuses a freed graph."""
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=1, batch_first=True, bidirectional=True)
    prune.l1_unstructured(lstm, "weight_ih_l0", amount=0.5)
    x, n = torch.randn(2, 5, 4), torch.tensor([5, 3])
    for _ in range(2):  # two training steps
        run_lstm(lstm, x, n).sum().backward()
    with torch.no_grad():
        lstm.weight_ih_l0_orig.add_(1.0)  # a changed parameter must reach the next call
        want = lstm(nn.utils.rnn.pack_padded_sequence(x, n, batch_first=True, enforce_sorted=False))[0]
        want = nn.utils.rnn.pad_packed_sequence(want, batch_first=True, total_length=5)[0]
        torch.testing.assert_close(run_lstm(lstm, x, n), want)
