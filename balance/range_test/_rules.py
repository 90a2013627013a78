"""Suggestion rules: pure functions of plain lists (LRs and smoothed losses, or accuracies).

fastai keeps its rules the same way, apart from plotting, so each can be tested and
re-run alone; :data:`SUGGESTION_RULES` names them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from balance.config import RangeTestConfig, SweepMode

MIN_POINTS = 3
"""Every rule needs at least this many finite points to answer."""

DEFAULT_ACCURACY_TOLERANCE: float = RangeTestConfig.model_fields["accuracy_tolerance"].default
"""Absolute accuracy below the peak that still counts as its plateau."""

DEFAULT_MINIMUM_FRACTION: float = RangeTestConfig.model_fields["minimum_fraction"].default
"""Share of the loss-minimum LR the ``minimum`` rule suggests."""

FALLBACK_ORDER = ("minimum", "steepest", "accuracy", "valley")
"""Rules tried, in this order, when the chosen rule cannot answer (best measured first)."""


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average, as the range test smooths its losses.

    ``avg = beta * avg + (1 - beta) * loss`` and ``smoothed = avg / (1 - beta**t)``
    after ``t`` finite losses, so early values are not dragged towards zero. A
    non-finite loss gives NaN and leaves the average untouched.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    out, average, count = [], 0.0, 0
    for loss in losses:
        if not math.isfinite(loss):
            out.append(math.nan)
            continue
        count += 1
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**count))
    return out


def usable_points(
    lrs: Sequence[float], values: Sequence[float], skip_start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The points after the first ``skip_start``, without non-finite LRs or values."""
    if len(lrs) != len(values):
        raise ValueError(
            f"lrs and values must have the same length, got {len(lrs)} and {len(values)}"
        )
    if skip_start < 0:
        raise ValueError(f"skip_start must be >= 0, got {skip_start}")
    x = np.asarray(lrs[skip_start:], dtype=float)
    y = np.asarray(values[skip_start:], dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def suggest_steepest(
    lrs: Sequence[float], smoothed: Sequence[float], *, skip_start: int = 0, mode: SweepMode = "exp"
) -> float | None:
    """The LR where the smoothed loss falls fastest on its way down to its minimum.

    The slope is taken against log(LR) for an exponential sweep (so every decade
    weighs the same) and against the LR itself for a linear one. Only points up
    to the minimum count: past it, a noisy recovery between spikes can look
    steeper than the real descent. ``None`` when fewer than 3 finite points
    remain or the loss never falls.
    """
    x, y = usable_points(lrs, smoothed, skip_start)
    lowest = int(np.argmin(y)) if len(y) else 0
    x, y = x[: lowest + 1], y[: lowest + 1]
    if len(x) < MIN_POINTS:
        return None
    position = np.log(x) if mode == "exp" else x
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.gradient(y, position)
    slopes[~np.isfinite(slopes)] = np.inf
    index = int(np.argmin(slopes))
    return float(x[index]) if slopes[index] < 0 else None


def suggest_valley(
    lrs: Sequence[float], smoothed: Sequence[float], *, skip_start: int = 0
) -> float | None:
    """fastai's "valley": halfway (by step) along the longest decreasing stretch.

    The stretch is the longest strictly decreasing subsequence of the smoothed
    loss (not necessarily contiguous, so noise does not cut it). Like fastai's
    ``valley`` (``start + int(len/3) + int(len/6)``), the answer sits about
    halfway from its start to its end. ``None`` when fewer than 3 finite points
    remain or the loss never falls.
    """
    x, y = usable_points(lrs, smoothed, skip_start)
    n = len(x)
    if n < MIN_POINTS:
        return None
    length = [1] * n  # longest decreasing subsequence ending at i ...
    first = list(range(n))  # ... and where it starts
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j] and length[j] + 1 > length[i]:
                length[i], first[i] = length[j] + 1, first[j]
    end = max(range(n), key=lambda i: (length[i], -i))  # longest; the earliest of equals
    if length[end] < 2:
        return None
    start = first[end]
    sections = (end - start) / 3
    return float(x[start + int(sections) + int(sections / 2)])


def suggest_minimum(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    *,
    skip_start: int = 0,
    fraction: float = DEFAULT_MINIMUM_FRACTION,
) -> float | None:
    """``fraction`` of the LR at the smoothed loss's minimum.

    The minimum is the largest LR at which the loss still went down; backing off
    from it leaves room for 1cycle's peak. fastai's "minimum" is ``fraction=0.1``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    x, y = usable_points(lrs, smoothed, skip_start)
    if len(x) < MIN_POINTS:
        return None
    return float(x[int(np.argmin(y))] * fraction)


def accuracy_plateau(
    val_lrs: Sequence[float], val_accuracies: Sequence[float], tolerance: float
) -> tuple[float, float, float] | None:
    """``(peak accuracy, peak LR, last LR of the plateau after the peak)``."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    x, acc = usable_points(val_lrs, val_accuracies)
    if len(x) < MIN_POINTS:
        return None
    peak = int(np.argmax(acc))
    end = peak
    while end + 1 < len(acc) and acc[end + 1] >= acc[peak] - tolerance:
        end += 1
    return float(acc[peak]), float(x[peak]), float(x[end])


def suggest_accuracy(
    val_lrs: Sequence[float],
    val_accuracies: Sequence[float],
    *,
    tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
) -> float | None:
    """The largest LR before validation accuracy first falls below ``peak - tolerance``.

    This is the end of the plateau of Smith's accuracy-vs-LR curve: walking up
    from the LR of peak accuracy, the last measured LR that is still within
    ``tolerance`` (absolute, e.g. 0.02 = two points) of the peak. ``None`` with
    fewer than 3 finite measurements.
    """
    plateau = accuracy_plateau(val_lrs, val_accuracies, tolerance)
    return None if plateau is None else plateau[2]


SuggestionRuleFunction = Callable[..., float | None]

SUGGESTION_RULES: dict[str, SuggestionRuleFunction] = {
    "steepest": suggest_steepest,
    "valley": suggest_valley,
    "minimum": suggest_minimum,
    "accuracy": suggest_accuracy,
}
"""Rule name -> rule. The loss rules take ``(lrs, smoothed, *, skip_start)``;
``accuracy`` takes ``(val_lrs, val_accuracies, *, tolerance)``."""


def suggest_all(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    val_lrs: Sequence[float],
    val_accuracies: Sequence[float],
    *,
    skip_start: int = 0,
    mode: SweepMode = "exp",
    tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
    minimum_fraction: float = DEFAULT_MINIMUM_FRACTION,
) -> dict[str, float | None]:
    """Every rule's LR, ``None`` where a rule cannot answer."""
    return {
        "steepest": suggest_steepest(lrs, smoothed, skip_start=skip_start, mode=mode),
        "valley": suggest_valley(lrs, smoothed, skip_start=skip_start),
        "minimum": suggest_minimum(lrs, smoothed, skip_start=skip_start, fraction=minimum_fraction),
        "accuracy": suggest_accuracy(val_lrs, val_accuracies, tolerance=tolerance),
    }


def choose(
    suggestions: dict[str, float | None], rule: str, start_lr: float, found: list[str]
) -> tuple[str, float]:
    """The configured rule's LR, else the first rule in FALLBACK_ORDER that answered."""
    chosen = suggestions.get(rule)
    if chosen is not None:
        return rule, chosen
    for other in FALLBACK_ORDER:
        value = suggestions.get(other)
        if value is not None:
            found.append(f"rule {rule!r} could not suggest an LR; used {other!r} instead")
            return other, value
    found.append(f"no rule could suggest an LR; max_lr falls back to start_lr={start_lr:g}")
    return "start_lr", start_lr
