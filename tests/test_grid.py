"""The one grid: levels, rounding, snapping, clipping rules, bad input."""

import pytest
import torch

from compress.quant import grid


@pytest.mark.parametrize("bits,expected", [(2, 1), (3, 3), (4, 7), (8, 127)])
def test_qmax(bits, expected):
    assert grid.qmax(bits) == expected


@pytest.mark.parametrize("bad", [1, 9, 0, -3, 4.0, "8", True, None])
def test_bad_bits_errors(bad):
    with pytest.raises(ValueError, match="bits must be an integer in \\[2, 8\\]"):
        grid.check_bits(bad)
    with pytest.raises(ValueError, match="bits"):
        grid.quantize(torch.ones(3), torch.tensor(1.0), bad)


@pytest.mark.parametrize("bits", range(2, 9))
def test_levels_are_symmetric_integers_times_scale(bits):
    scale = torch.tensor(0.37)
    w = torch.linspace(-5, 5, 2001) * scale * grid.qmax(bits)
    q = grid.quantize(w, scale, bits)
    assert q.dtype == torch.int8
    m = grid.qmax(bits)
    assert set(q.unique().tolist()) == set(range(-m, m + 1))  # every level, and only those
    deq = grid.dequantize(q, scale)
    assert torch.equal(deq, q.float() * 0.37)
    assert grid.quantize(torch.zeros(4), scale, bits).eq(0).all()  # mid-tread: 0 is a level


def test_ties_round_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997])
    assert grid.round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, -3.0, 0.0]
    q = grid.quantize(torch.tensor([0.5, -0.5, 2.5]), torch.tensor(1.0), 8)
    assert q.tolist() == [1, -1, 3]  # torch.round would give 0, 0, 2


def test_snap_idempotent_and_nearest():
    w = torch.randn(16, 32)
    scale = grid.compute_scale(w, 4, "channel", "max")
    once = grid.snap(w, scale, 4)
    assert torch.equal(grid.snap(once, scale, 4), once)
    err = (w - once).abs() / grid.broadcast_scale(scale, w)
    assert err.max() <= 0.5 + 1e-6  # max clip: nothing is clipped, error <= Δ/2


def test_channel_scale_axis0_and_all_zero_channel():
    w = torch.randn(5, 7)
    w[2] = 0
    s = grid.compute_scale(w, 8, "channel")
    assert s.shape == (5,)
    assert s[2] == 1.0
    exact = w[0].abs().max() / 127
    assert exact <= s[0] <= exact * (1 + 2**-7)  # rounded up to a bfloat16 value
    assert s[0] == s[0].to(torch.bfloat16).to(torch.float32)
    t = grid.compute_scale(w, 8, "tensor")
    assert t.shape == ()
    assert grid.compute_scale(torch.zeros(3, 3), 4, "tensor") == 1.0
    assert grid.compute_scale(torch.zeros(3, 3), 4, "channel", clip="mse").eq(1.0).all()


@pytest.mark.parametrize("bits", [3, 4])
def test_mse_clip_beats_max_clip_on_heavy_tails(bits):
    # Laplace rows: the usual heavy-tailed model of trained weights
    w = torch.distributions.Laplace(0.0, 1.0).sample((64, 256))
    errs = {}
    for clip in ("max", "mse"):
        s = grid.compute_scale(w, bits, "channel", clip=clip)
        errs[clip] = float(((w - grid.snap(w, s, bits)) ** 2).sum())
    assert errs["mse"] < 0.85 * errs["max"], errs


def test_bad_scale_shape_and_names():
    with pytest.raises(ValueError, match="scale must have shape"):
        grid.quantize(torch.ones(4, 3), torch.ones(3), 8)
    with pytest.raises(ValueError, match="granularity"):
        grid.compute_scale(torch.ones(4, 3), 8, "row")
    with pytest.raises(ValueError, match="clip"):
        grid.compute_scale(torch.ones(4, 3), 8, clip="l1")


@pytest.mark.parametrize("bits", [3, 4, 5, 8])
def test_one_clipping_rule_for_export_verify_ptq_and_the_regularizer(tmp_path, bits):
    from compress import QuantizationRegularizer
    from compress.bench.baselines import ptq
    from compress.decoder.fast import load
    from compress.export.pack import pack

    g = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 32, generator=g) ** 3  # heavy tails: max and MSE clipping differ
    expected = "mse" if bits <= 4 else "max"
    assert grid.default_clip(bits) == expected == QuantizationRegularizer(bits=bits, mode="grad").clip
    if bits <= 4:  # few levels: the two rules differ on heavy tails
        assert not torch.equal(grid.compute_scale(w, bits, clip="max"), grid.compute_scale(w, bits, clip="mse"))
    snapped, scales = ptq({"w": w}, bits)
    assert torch.equal(scales["w"], grid.compute_scale(w, bits, clip=expected))
    pack({"w": w}, tmp_path / "w.psq", bits=bits)  # what `compress export --bits` does for a plain state
    assert torch.equal(load(tmp_path / "w.psq")["w"], snapped["w"])


def test_scales_are_bfloat16_values_rounded_up():
    w = torch.randn(64, 33) * torch.logspace(-6, 2, 64)[:, None]
    for bits in (2, 4, 8):
        for clip in ("max", "mse"):
            s = grid.compute_scale(w, bits, "channel", clip)
            assert torch.equal(s, s.to(torch.bfloat16).to(torch.float32)), (bits, clip)
    raw = grid.max_scale(w, 8)
    s = grid.compute_scale(w, 8, "channel", "max")
    assert (s >= raw).all() and (s <= raw * (1 + 2**-7)).all()
    assert ((w.abs() / s[:, None]) <= grid.qmax(8)).all()  # max clipping still clips nothing
    x = torch.tensor([1.0, 3.0, 0.1, 1e-30, 3.3e38])
    up = grid.round_up_bf16(x)
    below = (up.view(torch.int32) - 0x10000).view(torch.float32)  # the bfloat16 value before it
    assert (up >= x).all() and torch.equal(up, up.to(torch.bfloat16).to(torch.float32))
    assert ((up == x) | (below < x)).all()  # the smallest such value
