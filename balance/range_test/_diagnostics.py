"""Diagnostics of a range-test curve: the super-convergence verdict and reasons for distrust."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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

SUPER_CONVERGENCE_SPAN = 1.2
"""Decades of LR over which the loss must keep falling for super-convergence to look likely.

Smith's own reading (validation accuracy staying at its peak far past the
steepest descent) did not agree with measured speed-ups: a 200-step sweep is too
short for accuracy to plateau, so it peaks near the end on every case. The span
of the loss's descent did: on the development cases of ``benchmarks/lr_suite.py``
those where 1cycle beat a tuned Adam baseline at least 3x spanned 1.36 to 1.57
decades, the one where it did not 0.84 to 0.96.
"""


def descent_span(
    lrs: Sequence[float], smoothed: Sequence[float], turn_lr: float, skip_start: int = 0
) -> tuple[float, float] | None:
    """``(descent LR, decades)``: where the loss has made half its drop, and how far the turn lies.

    ``None`` when the loss never fell or the turn comes before the half-way point.
    """
    x, y = usable_points(lrs, smoothed, skip_start)
    if len(x) < MIN_POINTS or y[0] <= y.min() or turn_lr <= 0:
        return None
    half = y[0] - 0.5 * (y[0] - y.min())
    descent = float(x[int(np.argmax(y <= half))])
    if descent > turn_lr:
        return None
    return descent, math.log10(turn_lr / descent)


def diagnose_super_convergence(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    turn_lr: float | None,
    val_lrs: Sequence[float] = (),
    val_accuracies: Sequence[float] = (),
    *,
    skip_start: int = 0,
    tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
    span: float = SUPER_CONVERGENCE_SPAN,
) -> SuperConvergence:
    """ "likely" when the smoothed loss keeps falling over at least ``span`` decades of LR.

    The descent is measured from where the loss has made half its drop to
    ``turn_lr``, where it turns (the ``onset`` rule's point before its
    fraction). A wide descent means the model still trains at LRs far above
    the ones that first work, which is what 1cycle's peak exploits. The
    validation plateau (``val_lrs``, ``val_accuracies``) is reported alongside.
    """
    if span <= 0:
        raise ValueError(f"span must be > 0, got {span}")
    plateau = accuracy_plateau(val_lrs, val_accuracies, tolerance) if val_lrs else None
    peak_accuracy, peak_lr, end_lr = plateau if plateau is not None else (None, None, None)
    accuracy = (
        ""
        if plateau is None
        else f" Validation accuracy peaked at {peak_accuracy:.3f} (LR {peak_lr:.3g}) and stayed "
        f"within {tolerance:g} of it up to LR {end_lr:.3g}."
    )
    measured = None if turn_lr is None else descent_span(lrs, smoothed, turn_lr, skip_start)
    if measured is None:
        return SuperConvergence(
            "unknown",
            None,
            turn_lr,
            None,
            peak_accuracy,
            peak_lr,
            end_lr,
            "Super-convergence is unknown: the smoothed loss never fell before it turned."
            + accuracy,
        )
    descent, decades = measured
    verdict = "likely" if decades >= span else "unlikely"
    explanation = (
        f"Super-convergence is {verdict}: the loss keeps falling over {decades:.2f} decades of "
        f"LR, from LR {descent:.3g} (half its drop) to LR {turn_lr:.3g} (where it turns); "
        f"{span:g} needed." + accuracy
    )
    return SuperConvergence(
        verdict, descent, turn_lr, decades, peak_accuracy, peak_lr, end_lr, explanation
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
