"""Comparisons that carry their noise: which cells could be the best, which axes matter.

Every cell of a study is measured on the same validation examples, so cells are
compared paired over examples (:mod:`balance.analysis._intervals` for the noise
model; seeds are not paired across cells). Three questions, each answered at a
stated level:

- **Which cells are indistinguishable from the best?** Simultaneous comparisons:
  for every pair of cells, a difference drawn from the noise model is divided by a
  standard error built from redrawn seed variances; the critical value is the
  ``1 - ALPHA`` quantile of the largest such ratio over all pairs (a studentized
  max-t test). A cell is worse than the
  best when the best's lead minus that critical value times its standard error is
  still above zero. The maximum over all pairs accounts both for the number of
  cells and for the best having been picked from the same data.
- **Does an axis have a detectable effect?** A permutation test of no effect: the
  statistic is the spread of the axis' marginal means (cell means averaged over
  the other axes); runs are permuted between the axis' values among cells that
  share every other axis and the seed (for a range axis: the other axes' bins, so
  the test is approximate there). Holm's correction runs over the axes. The effect
  size is the difference between the best and worst value's marginal means, with
  its interval from the noise model's draws.
- **What would it take?** The smallest difference the study separates with
  probability ``POWER``, and the seeds or validation examples the best and the
  runner-up would need, from an approximate split of their paired difference's
  variance into a seed part (scales with 1 / seeds) and an example part (1 / examples).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from balance.analysis._intervals import (
    LEVEL,
    RESAMPLES,
    NoiseModel,
    percentile_interval,
    resampled_means,
    seed_variances,
    split_covariance,
)

ALPHA = 0.05
"""The level of every test: a one-sided 5% test matches the lower end of a 90% interval."""

POWER = 0.8
"""The chance of separating a difference that "what it would take" plans for."""


@dataclass(frozen=True)
class CellRuns:
    """One cell's distinct seed runs as a seeds x examples correctness matrix."""

    key: str
    params: dict[str, Any]
    seeds: tuple[int, ...]
    correct: np.ndarray

    @property
    def mean(self) -> float:
        """Mean accuracy over seeds and examples."""
        return float(self.correct.mean())


def critical_value(
    model: NoiseModel,
    rng: np.random.Generator,
    resamples: int = RESAMPLES,
    alpha: float = ALPHA,
) -> float:
    """The max-t critical value over every ordered pair of cells (studentized).

    Each draw takes the cells' means from ``model`` (normal: variances as if known)
    and divides every pair's centred difference by a standard error built from seed
    variances redrawn as the study could have read them; the critical value is the
    ``1 - alpha`` quantile of the largest ratio over all pairs. NaN for fewer than two
    cells, or when no cell has two seeds: the seed noise is unknown, and the split's
    noise alone would call cells worse on a seed's luck.
    """
    cells = len(model.observed)
    if cells < 2 or not model.seeds_measured:
        return math.nan
    centred = model.draws(rng, resamples, heavy=False) - model.observed
    variances = model.redrawn_seed_variances(rng, resamples) / model.seeds
    diagonal = np.diag(model.split)
    largest = np.full(resamples, -np.inf)
    for first in range(cells):
        split = np.clip(diagonal[first] + diagonal - 2 * model.split[first], 0.0, None)
        error = np.sqrt(split + variances[:, [first]] + variances)
        ratio = (centred[:, [first]] - centred) / np.where(error > 0, error, np.inf)
        ratio[:, first] = -np.inf
        largest = np.maximum(largest, ratio.max(axis=1))
    return float(np.quantile(largest, 1 - alpha))


def worse_than(model: NoiseModel, best: int, critical: float) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: whether it is separated below cell ``best``, and the lead's standard error.

    A NaN ``critical`` (:func:`critical_value` could not tell) separates no cell.
    """
    lead = model.observed[best] - model.observed
    error = model.pair_error(best)
    if not math.isfinite(critical):
        return np.zeros(len(lead), dtype=bool), error
    separated = np.where(error > 0, lead - critical * error > 0, lead > 0)
    separated[best] = False
    return separated, error


class AxisTest(NamedTuple):
    """The test of no effect of one axis, and its effect size with an interval."""

    name: str
    levels: int
    p_value: float
    p_holm: float
    detectable: bool
    best_value: float
    worst_value: float
    effect: float  # best value's marginal mean minus the worst's
    low: float
    high: float
    permutations: int


def _marginal_matrix(values: Sequence[float]) -> tuple[list[float], np.ndarray]:
    """The distinct values and a cells x values matrix that averages cells per value."""
    levels = sorted(set(values))
    matrix = np.zeros((len(values), len(levels)))
    for cell, value in enumerate(values):
        matrix[cell, levels.index(value)] = 1.0
    return levels, matrix / matrix.sum(axis=0)


def permutation_p_value(
    cells: Sequence[CellRuns],
    values: Sequence[float],
    strata: Sequence[Any],
    rng: np.random.Generator,
    permutations: int,
) -> float:
    """P-value of the spread of marginal means of ``values`` under permuted run labels.

    Runs are permuted among the cells of one stratum (the other axes' values) that
    trained the same seed. NaN when no stratum holds runs of two of the axis' values:
    no permutation can move a run to another value, so there is nothing to test. A
    small design bounds the attainable p-value too (a 2 x 2 grid of 2 seeds cannot
    reach 5%): the p-value says so by staying high.
    """
    _, marginal = _marginal_matrix(values)
    groups: dict[tuple[Any, int], int] = {}
    accuracy, group, owner = [], [], []
    for index, cell in enumerate(cells):
        for seed, row in zip(cell.seeds, cell.correct, strict=True):
            accuracy.append(float(row.mean()))
            group.append(groups.setdefault((strata[index], seed), len(groups)))
            owner.append(index)
    mixed: dict[int, set[float]] = {}
    for slot, owner_index in zip(group, owner, strict=True):
        mixed.setdefault(slot, set()).add(values[owner_index])
    if all(len(found) < 2 for found in mixed.values()):
        return math.nan
    order = np.argsort(group, kind="stable")
    accuracy_sorted = np.asarray(accuracy)[order]
    group_sorted = np.asarray(group, dtype=float)[order]
    owner_sorted = np.asarray(owner)[order]
    average = np.zeros((len(order), len(cells)))
    average[np.arange(len(order)), owner_sorted] = 1.0
    average /= average.sum(axis=0)

    def spread(runs: np.ndarray) -> np.ndarray:
        level_means = runs @ average @ marginal
        return level_means.max(axis=-1) - level_means.min(axis=-1)

    observed = float(spread(accuracy_sorted))
    # Integer group ids plus a uniform key sort each group's slots among themselves.
    keys = group_sorted + rng.random((permutations, len(order)))
    shuffled = accuracy_sorted[np.argsort(keys, axis=1)]
    as_large = int((spread(shuffled) >= observed - 1e-12).sum())
    return (1 + as_large) / (1 + permutations)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def axis_tests(
    cells: Sequence[CellRuns],
    means: np.ndarray,
    axes: Mapping[str, Sequence[float]],
    rng: np.random.Generator,
    *,
    permutations: int = 2000,
    level: float = LEVEL,
) -> list[AxisTest]:
    """A test of no effect for every axis with two or more values, Holm-corrected.

    ``axes`` maps an axis to each cell's value on it (binned for a range axis);
    ``means`` are the cells' bootstrap means, for the effect's interval.
    """
    observed = np.array([cell.mean for cell in cells])
    tested = []
    for name, values in axes.items():
        if len(set(values)) < 2:
            continue
        strata = [
            tuple(other[index] for key, other in axes.items() if key != name)
            for index in range(len(cells))
        ]
        p_value = permutation_p_value(cells, values, strata, rng, permutations)
        levels, marginal = _marginal_matrix(values)
        level_means = observed @ marginal
        best = int(np.argmax(level_means))
        # Another value than the best, even when every marginal mean is equal.
        worst = min((i for i in range(len(levels)) if i != best), key=lambda i: level_means[i])
        contrast = means @ (marginal[:, best] - marginal[:, worst])
        low, high = percentile_interval(contrast, level)
        effect = float(level_means[best] - level_means[worst])
        tested.append((name, len(levels), p_value, levels[best], levels[worst], effect, low, high))
    # Holm over the axes that could be tested; an untestable one keeps NaN p-values.
    testable = [row for row in tested if math.isfinite(row[2])]
    adjusted = dict(
        zip((row[0] for row in testable), holm([row[2] for row in testable]), strict=True)
    )
    return [
        AxisTest(
            *row[:3],
            adjusted.get(row[0], math.nan),
            adjusted.get(row[0], 1.0) < ALPHA,
            *row[3:],
            permutations,
        )
        for row in tested
    ]


class Separation(NamedTuple):
    """What separating the best from the runner-up would take.

    ``detectable`` is the smallest difference the study separates with probability
    :data:`POWER` at its seeds and examples. ``seeds_needed`` (per cell, at this
    split) and ``examples_needed`` (at these seeds) are ``None`` when that change
    alone cannot do it (the other part's noise already exceeds the difference);
    ``scale_needed`` is the factor both would have to grow by together. All three
    are ``None`` for equal means or when the seed noise is unknown (one seed).
    """

    difference: float
    detectable: float | None
    seeds: int
    examples: int
    seeds_needed: int | None
    examples_needed: int | None
    scale_needed: float | None


def separation(
    best: CellRuns,
    runner: CellRuns,
    critical: float,
    seed_variance: tuple[float, float] | None = None,
) -> Separation:
    """What separating ``runner`` from ``best`` would take (an approximate plan).

    ``seed_variance`` is each cell's seed variance (default: :func:`seed_variances`
    of the two). The plan is unknown (``None`` figures) without a critical value or a
    seed variance: nothing says how much a seed moves a cell.
    """
    seeds = min(len(best.seeds), len(runner.seeds))
    examples = best.correct.shape[1]
    difference = best.mean - runner.mean
    variances = seed_variance or tuple(seed_variances([best.correct, runner.correct]))
    if not math.isfinite(critical) or not any(v > 0 for v in variances):
        return Separation(difference, None, seeds, examples, None, None, None)
    # The split's part of the paired difference's variance scales with 1 / examples,
    # the seeds' part with 1 / seeds.
    pair = split_covariance([best.correct, runner.correct])
    example_part = float(pair[0, 0] + pair[1, 1] - 2 * pair[0, 1])
    seed_part = sum(v / len(c.seeds) for v, c in zip(variances, (best, runner), strict=True))
    factor = critical + NormalDist().inv_cdf(POWER)
    detectable = factor * math.sqrt(seed_part + example_part)
    if difference <= 0:
        return Separation(difference, detectable, seeds, examples, None, None, None)
    target = (difference / factor) ** 2  # the variance the difference can afford
    seeds_needed = examples_needed = None
    if target > example_part:
        # The same seed count n for both cells: (v_best + v_runner) / n fits the target.
        seeds_needed = max(seeds, math.ceil(sum(variances) / (target - example_part)))
    if target > seed_part:
        examples_needed = max(examples, math.ceil(examples * example_part / (target - seed_part)))
    scale = max(1.0, (seed_part + example_part) / target)
    return Separation(difference, detectable, seeds, examples, seeds_needed, examples_needed, scale)


class PairedDifference(NamedTuple):
    """One side minus the other on the same examples and seeds, with its interval."""

    difference: float
    low: float
    high: float
    level: float
    seeds: int
    examples: int

    @property
    def beyond_noise(self) -> bool:
        """Whether the interval excludes zero."""
        return self.low > 0 or self.high < 0


def paired_difference(
    first: np.ndarray,
    second: np.ndarray,
    rng: np.random.Generator,
    *,
    resamples: int = 2000,
    level: float = LEVEL,
) -> PairedDifference:
    """``first`` minus ``second``: seeds x examples matrices paired row by row and by column.

    Row ``i`` of both trained seed ``i``: the per-seed differences are one cell's runs
    to :func:`~balance.analysis._intervals.resampled_means` (their seed variance and
    the split's variance of the per-example difference).
    """
    if first.shape != second.shape:
        raise ValueError(f"paired runs differ in shape: {first.shape} and {second.shape}")
    seeds, examples = first.shape
    paired = first.astype(float) - second.astype(float)
    differences = resampled_means([paired], rng, resamples)[:, 0]
    low, high = percentile_interval(differences, level)
    mean = float(first.mean() - second.mean())
    return PairedDifference(mean, low, high, level, seeds, examples)
