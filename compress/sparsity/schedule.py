"""Target sparsity per epoch: the gradual pruning schedule of Zhu & Gupta (2017).

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (arXiv:1710.01878), eq. (1), with epochs as the time unit:

    s_t = s_f + (s_0 − s_f) · (1 − (t − t_0) / n)³     for t_0 <= t <= t_0 + n

with ``s_0`` the initial and ``s_f`` the final sparsity, ``t_0 = start_epoch`` and
``n = end_epoch − start_epoch``. The cubic prunes fast early, while the network has many
redundant weights, and slowly near the end. Before ``t_0`` the target is ``s_0``; after
``t_0 + n`` it stays ``s_f``.
"""

from __future__ import annotations

from collections.abc import Callable

from compress import checks

Schedule = str | Callable[[float], float]
SCHEDULES = ("cubic", "linear")


def check_schedule(schedule: Schedule, name: str = "schedule") -> Schedule:
    """Validate a schedule argument: 'cubic', 'linear', or a callable of progress."""
    if callable(schedule) or (isinstance(schedule, str) and schedule in SCHEDULES):
        return schedule
    checks.fail(name, f"{', '.join(map(repr, SCHEDULES))} or a callable progress -> fraction", schedule)


def check_sparsity(value: float, name: str) -> float:
    """Validate a sparsity in [0, 1) (1.0 would remove every weight)."""
    return checks.check_fraction(name, value, below_one=True)


def sparsity_at(
    epoch: int,
    final_sparsity: float,
    start_epoch: int,
    end_epoch: int,
    schedule: Schedule = "cubic",
    initial_sparsity: float = 0.0,
) -> float:
    """Target sparsity at the start of ``epoch``.

    Args:
        epoch: the (0-based) epoch.
        final_sparsity: ``s_f`` in [0, 1), reached at ``end_epoch``.
        start_epoch: ``t_0``; the target is ``initial_sparsity`` up to and at it.
        end_epoch: the epoch from which the target is ``final_sparsity``; ``>= start_epoch``.
        schedule: "cubic" (Zhu & Gupta), "linear", or a callable mapping progress
            ``p = (t − t_0)/n`` in [0, 1] to a fraction in [0, 1] of the way from
            ``s_0`` to ``s_f`` (it should return 1 at p = 1 for the final target).
        initial_sparsity: ``s_0`` in [0, 1).

    Example:
        >>> sparsity_at(0, 0.5, 0, 4), sparsity_at(2, 0.5, 0, 4), sparsity_at(4, 0.5, 0, 4)
        (0.0, 0.4375, 0.5)
    """
    s_f = check_sparsity(final_sparsity, "final_sparsity")
    s_0 = check_sparsity(initial_sparsity, "initial_sparsity")
    check_schedule(schedule)
    for name, v in (("epoch", epoch), ("start_epoch", start_epoch)):
        checks.check_int(name, v, min=0)
    checks.check_int("end_epoch", end_epoch, min=start_epoch, min_name="start_epoch")
    if epoch < start_epoch:
        return s_0
    if epoch >= end_epoch:
        return s_f
    p = (epoch - start_epoch) / (end_epoch - start_epoch)  # in [0, 1)
    if schedule == "cubic":
        return s_f + (s_0 - s_f) * (1.0 - p) ** 3
    if schedule == "linear":
        return s_0 + (s_f - s_0) * p
    f = schedule(p)
    return s_0 + (s_f - s_0) * checks.check_fraction(f"schedule({p})", f)
