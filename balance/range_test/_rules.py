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

DEFAULT_ONSET_RISE: float = RangeTestConfig.model_fields["onset_rise"].default
"""Share of its drop the loss climbs back where the ``onset`` rule says it turned."""

ONSET_FRACTIONS = {"sgd": 0.5, "adam": 1.0}
"""Share of the turning LR the ``onset`` rule suggests, per optimizer family (AdamW is "adam").

Chosen on the development cases of ``benchmarks/lr_suite.py``: under SGD the
best 1cycle peak lay about half the divergence onset; under Adam and AdamW,
whose steps are normalized and blow up more gently, at the onset itself.
"""

FALLBACK_ORDER = ("onset", "minimum", "steepest", "accuracy", "valley")
"""Rules tried, in this order, when the chosen rule cannot answer (best measured first)."""

MAX_LR_RULES = ("onset", "minimum")
"""Rules calibrated to name the 1cycle peak itself, and so comparable with each other.

``steepest`` and ``valley`` name a good *constant* LR (fastai's use), well below
the peak, and ``accuracy`` the end of the accuracy plateau: they are shown, not
compared.
"""

DISAGREEMENT = 10.0
"""Max-LR rules further apart than this factor are not trusted: the smallest is taken."""


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


def smooth_zero_phase(losses: Sequence[float], beta: float) -> list[float]:
    """The bias-corrected EMA run forwards, then backwards over its output: no lag.

    A forward EMA trails the curve by about ``beta / (1 - beta)`` steps (49 at
    0.98: 1.5 decades of a 200-step, 6-decade sweep), so rules read off it pick
    LRs too high. Running the same filter back over the result cancels the shift
    (as ``scipy.signal.filtfilt`` does), at the price of needing the whole
    curve, which every rule has once the sweep ends. Non-finite losses stay NaN.
    """
    forward = smooth(losses, beta)
    return smooth(forward[::-1], beta)[::-1]


def rule_curve(losses: Sequence[float], beta: float, skip_start: int = 0) -> list[float]:
    """The curve every rule reads: losses capped at their starting level, smoothed without lag.

    Past the starting level (the highest of the first ``skip_start + 1`` finite
    losses) a loss only says "diverged"; its size carries nothing a rule uses,
    and one huge value from the step that tripped the stop would otherwise leak
    backwards through the zero-phase filter over the whole curve.
    """
    finite = [loss for loss in losses[: skip_start + 1] if math.isfinite(loss)]
    if not finite:
        return smooth_zero_phase(losses, beta)
    cap = max(finite)
    return smooth_zero_phase([min(loss, cap) for loss in losses], beta)


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


def suggest_onset(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    *,
    skip_start: int = 0,
    rise: float = 0.1,
    fraction: float = 1.0,
) -> float | None:
    """``fraction`` of the LR where the loss turns: the divergence onset.

    Past the smoothed loss's minimum, the first point that has climbed back
    ``rise`` of the way from the minimum to the curve's first value. Scale-free
    (it does not depend on the loss's units) and, unlike the minimum itself,
    well defined on a curve that falls to a long flat floor before it rises.
    ``None`` when fewer than 3 finite points remain or the loss never turns.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if rise <= 0:
        raise ValueError(f"rise must be > 0, got {rise}")
    x, y = usable_points(lrs, smoothed, skip_start)
    if len(x) < MIN_POINTS:
        return None
    lowest = int(np.argmin(y))
    level = y[lowest] + rise * (y[0] - y[lowest])
    if y[0] <= y[lowest]:
        return None
    above = np.nonzero(y[lowest + 1 :] >= level)[0]
    return None if len(above) == 0 else float(x[lowest + 1 + above[0]] * fraction)


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
    "onset": suggest_onset,
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
    onset_rise: float = DEFAULT_ONSET_RISE,
    onset_fraction: float = ONSET_FRACTIONS["sgd"],
    stopped_at: float | None = None,
) -> dict[str, float | None]:
    """Every rule's LR, ``None`` where a rule cannot answer.

    ``stopped_at`` is the LR where the divergence stop ended the sweep: when the
    smoothed curve has not yet climbed ``onset_rise`` by then, the stop saw the
    turn first and ``onset`` reads it there.
    """
    onset = suggest_onset(lrs, smoothed, skip_start=skip_start, rise=onset_rise)
    if onset is None and stopped_at is not None:
        onset = stopped_at
    return {
        "onset": None if onset is None else onset * onset_fraction,
        "steepest": suggest_steepest(lrs, smoothed, skip_start=skip_start, mode=mode),
        "valley": suggest_valley(lrs, smoothed, skip_start=skip_start),
        "minimum": suggest_minimum(lrs, smoothed, skip_start=skip_start, fraction=minimum_fraction),
        "accuracy": suggest_accuracy(val_lrs, val_accuracies, tolerance=tolerance),
    }


def rule_spread(suggestions: dict[str, float | None]) -> float | None:
    """How far apart the max-LR rules are (largest / smallest); ``None`` with fewer than two."""
    answered = [lr for name in MAX_LR_RULES if (lr := suggestions.get(name)) is not None]
    return max(answered) / min(answered) if len(answered) >= 2 else None


def choose(
    suggestions: dict[str, float | None],
    rule: str,
    start_lr: float,
    found: list[str],
    *,
    distrust: bool = False,
) -> tuple[str, float]:
    """The configured rule's LR, else the first rule in FALLBACK_ORDER that answered.

    When the configured rule is a max-LR rule and those rules disagree by more
    than :data:`DISAGREEMENT`, or ``distrust`` is set (a flat curve), the smallest
    of them is taken and ``found`` says so, with the spread.
    """
    chosen = suggestions.get(rule)
    spread = rule_spread(suggestions)
    if rule in MAX_LR_RULES and (distrust or (spread is not None and spread > DISAGREEMENT)):
        answered = {name: suggestions[name] for name in MAX_LR_RULES if suggestions.get(name)}
        if answered:
            smallest = min(answered, key=lambda name: answered[name] or math.inf)
            shown = ", ".join(f"{name} {lr:.3g}" for name, lr in answered.items())
            why = "the curve is flat" if distrust else f"the max-LR rules disagree {spread:.0f}x"
            found.append(f"{why} ({shown}); took the smallest, {smallest}")
            return smallest, float(answered[smallest] or start_lr)
    if chosen is not None:
        return rule, chosen
    for other in FALLBACK_ORDER:
        value = suggestions.get(other)
        if value is not None:
            found.append(f"rule {rule!r} could not suggest an LR; used {other!r} instead")
            return other, value
    found.append(f"no rule could suggest an LR; max_lr falls back to start_lr={start_lr:g}")
    return "start_lr", start_lr
