"""Diagnostics of a range-test curve: the super-convergence verdict and reasons for distrust."""

from __future__ import annotations

from collections.abc import Sequence

from balance.range_test._result import SuperConvergence
from balance.range_test._rules import (
    DEFAULT_ACCURACY_TOLERANCE,
    MIN_POINTS,
    accuracy_plateau,
    usable_points,
)

TRUSTED_POINTS = 10
"""Fewer usable points than this earns a "too few points" warning."""

EARLY_DIVERGENCE = 0.1
"""Divergence within this share of the sweep earns a warning (start_lr too high)."""

FLAT_DROP = 0.05
"""A smoothed loss that falls by less than this share of its start is "flat"."""

SUPER_CONVERGENCE_FACTOR = 3.0
"""Accuracy must hold its peak up to this multiple of the steepest-descent LR."""


def diagnose_super_convergence(
    val_lrs: Sequence[float],
    val_accuracies: Sequence[float],
    steepest_lr: float | None,
    *,
    tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
    factor: float = SUPER_CONVERGENCE_FACTOR,
) -> SuperConvergence:
    """Smith's sign of super-convergence: accuracy stays high far past the steepest descent.

    ``likely`` when validation accuracy stays within ``tolerance`` of its peak up
    to an LR at least ``factor`` times ``steepest_lr``; ``unknown`` without
    accuracy measurements or a steepest-descent LR.
    """
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    plateau = accuracy_plateau(val_lrs, val_accuracies, tolerance)
    if plateau is None:
        return SuperConvergence(
            "unknown",
            None,
            None,
            None,
            steepest_lr,
            None,
            f"Super-convergence is unknown: fewer than {MIN_POINTS} validation accuracies were "
            "measured (set val_every > 0).",
        )
    peak_accuracy, peak_lr, end_lr = plateau
    if steepest_lr is None or steepest_lr <= 0:
        return SuperConvergence(
            "unknown",
            peak_accuracy,
            peak_lr,
            end_lr,
            None,
            None,
            "Super-convergence is unknown: the smoothed loss never descended, so there is no "
            "steepest-descent LR to compare with.",
        )
    ratio = end_lr / steepest_lr
    verdict = "likely" if ratio >= factor else "unlikely"
    explanation = (
        f"Super-convergence is {verdict}: validation accuracy stays within {tolerance:g} of its "
        f"peak {peak_accuracy:.3f} (at LR {peak_lr:.3g}) up to LR {end_lr:.3g}, {ratio:.1f}x the "
        f"steepest-descent LR {steepest_lr:.3g} ({factor:g}x needed)."
    )
    return SuperConvergence(
        verdict, peak_accuracy, peak_lr, end_lr, steepest_lr, ratio, explanation
    )


def curve_warnings(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    *,
    num_steps: int,
    diverged_at: int | None,
    skip_start: int = 0,
) -> list[str]:
    """Plain-words reasons not to trust a curve: too short, early divergence, flat."""
    found = []
    x, y = usable_points(lrs, smoothed, skip_start)
    if len(x) < TRUSTED_POINTS:
        found.append(
            f"too few points: {len(x)} usable after skip_start={skip_start} "
            f"(want {TRUSTED_POINTS}+); raise num_steps or lower start_lr"
        )
    if diverged_at is not None and diverged_at < EARLY_DIVERGENCE * num_steps:
        found.append(
            f"diverged in the first {EARLY_DIVERGENCE:.0%} of the sweep (step {diverged_at} "
            f"of {num_steps}, LR {lrs[diverged_at]:.3g}); lower start_lr"
        )
    if is_flat(lrs, smoothed, skip_start):
        drop = (y[0] - y.min()) / abs(y[0]) if y[0] != 0 else 0.0
        found.append(
            f"curve is flat: the smoothed loss falls only {max(drop, 0.0):.1%} "
            f"(from {y[0]:.4g} to {y.min():.4g}); widen the LR range or check that the "
            "model learns"
        )
    return found


def is_flat(lrs: Sequence[float], smoothed: Sequence[float], skip_start: int = 0) -> bool:
    """Whether the smoothed loss falls by less than :data:`FLAT_DROP` of its first value."""
    x, y = usable_points(lrs, smoothed, skip_start)
    if len(x) < MIN_POINTS:
        return False
    drop = (y[0] - y.min()) / abs(y[0]) if y[0] != 0 else 0.0
    return bool(drop < FLAT_DROP)
