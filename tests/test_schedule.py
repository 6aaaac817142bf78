"""The sparsity schedule as a pure function (no Trainer)."""

import pytest

from compress.sparsity.schedule import sparsity_at


def test_cubic_matches_zhu_gupta():
    s_f, t0, end = 0.8, 2, 7
    n = end - t0
    for t in range(0, 10):
        got = sparsity_at(t, s_f, t0, end)
        if t < t0:
            assert got == 0.0
        elif t >= end:
            assert got == s_f
        else:
            assert got == pytest.approx(s_f + (0.0 - s_f) * (1 - (t - t0) / n) ** 3)
    seq = [sparsity_at(t, s_f, t0, end) for t in range(10)]
    assert all(b >= a for a, b in zip(seq, seq[1:]))


def test_linear_initial_and_callable():
    assert sparsity_at(1, 0.6, 0, 4, "linear") == pytest.approx(0.15)
    assert sparsity_at(0, 0.6, 0, 4, "cubic", initial_sparsity=0.2) == pytest.approx(0.2)
    assert sparsity_at(2, 0.6, 0, 4, lambda p: p**2) == pytest.approx(0.6 * 0.25)
    assert sparsity_at(3, 0.5, 3, 3) == 0.5  # n = 0: jump to final at start


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(final_sparsity=1.0), "final_sparsity must be a number in \\[0, 1\\)"),
        (dict(final_sparsity=-0.1), "final_sparsity"),
        (dict(schedule="exp"), "schedule must be 'cubic', 'linear' or a callable"),
        (dict(end_epoch=1, start_epoch=2), "end_epoch must be an integer >= start_epoch \\(2\\), got 1"),
        (dict(epoch=-1), "epoch must be a non-negative integer"),
        (dict(schedule=lambda p: 2.0, epoch=1), "schedule\\(0.25\\) must be a number in \\[0, 1\\], got 2.0"),
    ],
)
def test_errors(kwargs, match):
    args = dict(epoch=0, final_sparsity=0.5, start_epoch=0, end_epoch=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sparsity_at(**args)
