"""The absolute-cosine penalty: values, and the closed-form gradient against autograd."""

import math

import pytest
import torch

from compress.quant import grid
from compress.quant.penalty import grid_distance, penalty, penalty_grad, scaled_grad_


def test_zero_on_grid_and_largest_halfway():
    scale = torch.tensor([0.1, 0.25, 2.0], dtype=torch.float64)
    k = torch.arange(-7, 8, dtype=torch.float64)
    on = k[None, :] * scale[:, None]
    assert float(penalty(on, scale)) == pytest.approx(0.0, abs=1e-12)
    half = (k[None, :] + 0.5) * scale[:, None]
    assert float(penalty(half, scale)) == pytest.approx(half.numel(), abs=1e-9)
    # one weight: maximal halfway, increasing with distance in between
    xs = torch.linspace(0, 0.5, 11, dtype=torch.float64)
    vals = torch.stack([penalty(x.view(1), torch.tensor(1.0, dtype=torch.float64)) for x in xs])
    assert (vals.diff() > 0).all()


@pytest.mark.parametrize("pull_clipped", [True, False])
@pytest.mark.parametrize("bits", [None, 2, 4])
@pytest.mark.parametrize("shape,gran", [((6, 5), "channel"), ((6, 5), "tensor"), ((4, 3, 5), "channel"), ((7,), "tensor")])
def test_closed_form_gradient_matches_autograd_float64(shape, gran, bits, pull_clipped):
    w = (torch.randn(shape, dtype=torch.float64) * 0.3).requires_grad_()
    # MSE clipping leaves weights beyond qmax·Δ: the flat part beyond the range is exercised
    scale = grid.compute_scale(w.detach(), bits or 4, gran, clip="mse").to(torch.float64)
    if bits is not None:
        assert (w.detach().abs() > grid.broadcast_scale(scale, w) * grid.qmax(bits)).any()
    penalty(w, scale, bits, pull_clipped).backward()
    torch.testing.assert_close(penalty_grad(w.detach(), scale, bits, pull_clipped), w.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pull_clipped", [True, False])
@pytest.mark.parametrize("bits,clip", [(8, "max"), (3, "mse")])
def test_scaled_grad_is_lambda_delta2_over_pi2_times_autograd(bits, clip, pull_clipped):
    w = (torch.randn(8, 16, dtype=torch.float64) * 0.2).requires_grad_()
    scale = grid.compute_scale(w.detach(), bits, "channel", clip=clip).to(torch.float64)
    penalty(w, scale, bits, pull_clipped).backward()
    lam = 0.7
    s = grid.broadcast_scale(scale, w)
    out = torch.ones_like(w.detach())
    scaled_grad_(out, w.detach(), 1.0 / s, s * (lam / math.pi), s * grid.qmax(bits), lam if pull_clipped else 0.0)
    expected = 1.0 + lam * (s / math.pi) ** 2 * w.grad  # added to what was there
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    inside = w.detach().abs() <= s * grid.qmax(bits)
    # inside the range: bounded by λΔ/π, and about λ·(w − snap(w)) close to a level
    assert ((out - 1.0).abs()[inside] <= (lam * s / math.pi).expand_as(w)[inside] + 1e-12).all()
    near = inside & ((w.detach() - grid.snap(w.detach(), scale, bits)).abs() < 0.05 * s)
    torch.testing.assert_close(
        (out - 1.0)[near], (lam * (w.detach() - grid.snap(w.detach(), scale, bits)))[near], rtol=0.01, atol=1e-7
    )


def test_beyond_the_clipping_range_pulled_or_flat():
    # pull_clipped=False: beyond ±qmax·Δ the penalty is flat, no gradient, so the task can
    # grow the range (Δ follows at the next epoch); inside it, the usual pull. With the
    # pull, the scaled gradient beyond the range is exactly λ·(w − clamp(w)).
    scale = torch.tensor(0.5, dtype=torch.float64)
    w = torch.tensor([3.4, 3.6, 5.0, -9.0, -3.3], dtype=torch.float64)  # 4 bits: top level 3.5
    g = penalty_grad(w, scale, 4, pull_clipped=False)
    assert g[1:4].abs().max() < 1e-12 and g[0] < 0 and g[4] > 0  # sin(7π) is 0 up to rounding
    out = torch.zeros_like(w)
    scaled_grad_(out, w, 1.0 / scale, scale * (1.0 / math.pi), scale * 7, 0.0)
    assert out[1:4].eq(0).all() and out[0] < 0 and out[4] > 0
    assert float(penalty(w[1:4], scale, 4, pull_clipped=False)) < 1e-12
    pulled = torch.zeros_like(w)
    scaled_grad_(pulled, w, 1.0 / scale, scale * (1.0 / math.pi), scale * 7, 2.0)
    torch.testing.assert_close(pulled[1:4], 2.0 * (w[1:4] - w[1:4].clamp(-3.5, 3.5)), atol=1e-12, rtol=0)
    assert torch.equal(pulled[[0, 4]], out[[0, 4]])
    assert (grid_distance(w, scale, 4) > 0.5).tolist() == [False, False, True, True, False]  # beyond 3.75


def test_grid_distance_units_of_delta():
    scale = torch.tensor(0.5)
    w = torch.tensor([0.0, 0.125, 0.25, -0.5, 10.0])
    d = grid_distance(w, scale, 4)  # qmax 7 → top level 3.5; 10.0 is clipped
    torch.testing.assert_close(d, torch.tensor([0.0, 0.25, 0.5, 0.0, 13.0]))
