"""A study's answer with its noise: every cell's interval, the cells that could be the best,
a test of no effect per axis, what separating the top cells would take, and the test
split's chosen-minus-baseline difference. The methods are in
:mod:`balance.analysis._intervals` and :mod:`balance.analysis._comparisons`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from balance.analysis._comparisons import (
    ALPHA,
    AxisTest,
    CellRuns,
    PairedDifference,
    Separation,
    axis_tests,
    critical_value,
    paired_difference,
    separation,
    worse_than,
)
from balance.analysis._grid import bin_ranges
from balance.analysis._intervals import (
    LEVEL,
    RESAMPLES,
    NoiseModel,
    percentile_interval,
    seed_variances,
)
from balance.cells import distinct_runs, rank
from balance.config import SEARCHED
from balance.record import StudyRecord
from balance.runs import EvaluationSide, FinalEvaluation

PERMUTATIONS = 2000
BINS = 4  # a range axis is tested on this many bins, as the report summarises it


class CellEstimate(NamedTuple):
    """One cell's mean validation accuracy, its interval, and whether it could be the best."""

    key: str
    params: dict[str, Any]
    mean: float
    low: float
    high: float
    seeds: int
    indistinguishable: bool  # not separated below the best (the best itself included)


class NoiseAnalysis(NamedTuple):
    """Everything :func:`analyse_noise` found, at ``level`` (intervals) and ``alpha`` (tests)."""

    level: float
    alpha: float
    examples: int
    critical: float
    best: CellEstimate
    runner_up: CellEstimate | None
    cells: list[CellEstimate]
    axes: list[AxisTest]
    separation: Separation | None
    test: PairedDifference | None

    @property
    def indistinguishable(self) -> list[CellEstimate]:
        """The cells that could be the best at this level, best first, then by mean."""
        return [cell for cell in self.cells if cell.indistinguishable]

    def to_summary(self) -> dict[str, Any]:
        """The analysis as ``summary.json`` keys (strict JSON)."""
        return {
            "noise": {
                "level": self.level,
                "alpha": self.alpha,
                "validation_examples": self.examples,
                "critical_value": self.critical,
                "method": "seed variances shrunk toward the typical (4 degrees of freedom) "
                "plus the split's covariance over examples; studentized max-t over all "
                "pairs of cells; permutation tests of no effect, Holm over axes",
            },
            "cells": [_cell_summary(cell) for cell in self.cells],
            "indistinguishable": [cell.params for cell in self.indistinguishable],
            "axes": {test.name: _axis_summary(test) for test in self.axes},
            "what_it_would_take": None if self.separation is None else self.separation._asdict(),
            "test_difference": None if self.test is None else _difference_summary(self.test),
        }


def _cell_summary(cell: CellEstimate) -> dict[str, Any]:
    return {
        "params": cell.params,
        "val_accuracy": cell.mean,
        "low": cell.low,
        "high": cell.high,
        "seeds": cell.seeds,
        "indistinguishable": cell.indistinguishable,
    }


def _axis_summary(test: AxisTest) -> dict[str, Any]:
    summary = test._asdict()
    summary.pop("name")
    return summary


def _difference_summary(test: PairedDifference) -> dict[str, Any]:
    return {**test._asdict(), "beyond_noise": test.beyond_noise}


def empty_summary() -> dict[str, Any]:
    """The keys of :meth:`NoiseAnalysis.to_summary` for a study without per-example results."""
    return {
        "noise": None,
        "cells": [],
        "indistinguishable": None,
        "axes": {},
        "what_it_would_take": None,
        "test_difference": None,
    }


def cell_runs(record: StudyRecord) -> list[CellRuns] | None:
    """Every cell with a counted run, best first, then by the ranking rule.

    ``None`` when a counted run kept no per-example correctness (a study stored by
    an older balance) or runs measured different numbers of examples.
    """
    cells = sorted(record.cells, key=lambda cell: rank(-cell.mean, cell.seeds, cell.params))
    found = []
    for cell in cells:
        runs = distinct_runs(record.trials, cell.key)
        rows = [run.correct() for run in runs]
        if not rows or any(row is None for row in rows):
            return None
        found.append(
            CellRuns(
                cell.key,
                cell.params,
                tuple(run.seed for run in runs),
                np.vstack([row for row in rows if row is not None]),
            )
        )
    if len({cell.correct.shape[1] for cell in found}) > 1:
        return None
    return found


def _axis_values(record: StudyRecord, cells: list[CellRuns]) -> dict[str, list[float]]:
    """Each searched axis' value per cell; a range axis binned (:func:`bin_ranges`)."""
    frame = pd.DataFrame([cell.params for cell in cells], columns=list(SEARCHED))
    binned = bin_ranges(frame, record.config, bins=BINS)
    return {
        name: [float(value) for value in binned[name]]
        for name in SEARCHED
        if record.config.search.axes().get(name) is not None
    }


def analyse_noise(
    record: StudyRecord,
    *,
    resamples: int = RESAMPLES,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> NoiseAnalysis | None:
    """The noise analysis of a study; ``None`` without per-example results or cells.

    Seeded: the same record gives the same numbers.
    """
    cells = cell_runs(record)
    if not cells:
        return None
    rng = np.random.default_rng(seed)
    means, critical, separated = best_set(cells, rng, resamples)
    variances = seed_variances([cell.correct for cell in cells])
    estimates = [
        CellEstimate(
            cell.key,
            cell.params,
            cell.mean,
            *percentile_interval(np.clip(means[:, index], 0.0, 1.0), LEVEL),  # accuracies
            len(cell.seeds),
            not bool(separated[index]),
        )
        for index, cell in enumerate(cells)
    ]
    axes = axis_tests(cells, means, _axis_values(record, cells), rng, permutations=permutations)
    runner = estimates[1] if len(estimates) > 1 else None
    return NoiseAnalysis(
        level=LEVEL,
        alpha=ALPHA,
        examples=cells[0].correct.shape[1],
        critical=critical,
        best=estimates[0],
        runner_up=runner,
        cells=estimates,
        axes=axes,
        separation=None
        if runner is None
        else separation(cells[0], cells[1], critical, (variances[0], variances[1])),
        test=test_difference(record.final, rng),
    )


def best_set(
    cells: Sequence[CellRuns],
    rng: np.random.Generator,
    resamples: int = RESAMPLES,
    alpha: float = ALPHA,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Drawn means, the max-t critical value, and per cell whether it is worse.

    ``cells`` come best first (as :func:`cell_runs` orders them); a cell is worse when
    it is separated below the first at level ``alpha``.
    """
    model = NoiseModel.of([cell.correct for cell in cells])
    means = model.draws(rng, resamples)
    critical = critical_value(model, rng, resamples, alpha)
    separated, _ = worse_than(model, 0, critical)
    return means, critical, separated


def race_round(
    cells: Sequence[CellRuns], *, step: int, max_seeds: int, seed: int = 0
) -> dict[str, int]:
    """The seeds each cell gets in the next racing round, by cell key (F-Race style).

    Only cells not yet separated from the best race on, ``step`` seeds more each
    (fewer where ``max_seeds`` leaves fewer); a cell left out of one round rejoins a
    later one if the others' new seeds bring the best down toward it. Empty when the
    best stands alone (the race is decided) or every surviving cell has ``max_seeds``
    (the budget is spent).
    A race looks at its cells up to ``ceil(max_seeds / step)`` times, so it drops a
    cell only when it is separated at :data:`ALPHA` over that many looks (Bonferroni):
    stricter than the verdict, so that a cell the full grid would keep is not left
    behind on the noise of its first seeds. Seeded like :func:`analyse_noise`: the
    same runs give the same round.
    """
    if len(cells) < 2:
        return {}
    looks = -(-max_seeds // step)
    alpha = ALPHA / looks
    # A far tail needs draws: about 200 beyond the quantile.
    resamples = max(RESAMPLES, math.ceil(200 / alpha))
    _, _, separated = best_set(cells, np.random.default_rng(seed), resamples, alpha)
    alive = [cell for cell, worse in zip(cells, separated, strict=True) if not worse]
    if len(alive) < 2:
        return {}
    return {
        cell.key: min(step, max_seeds - len(cell.seeds))
        for cell in alive
        if len(cell.seeds) < max_seeds
    }


def _side_matrix(side: EvaluationSide) -> np.ndarray | None:
    rows = [run.correct() for run in side.runs]
    if not rows or any(row is None for row in rows):
        return None
    return np.vstack([row for row in rows if row is not None])


def test_difference(
    final: FinalEvaluation | None, rng: np.random.Generator
) -> PairedDifference | None:
    """Chosen minus baseline test accuracy, paired by seed index and example.

    ``None`` without a baseline, per-example test results, or equal seed counts.
    """
    if final is None or final.baseline is None:
        return None
    chosen, baseline = _side_matrix(final.chosen), _side_matrix(final.baseline)
    if chosen is None or baseline is None or chosen.shape != baseline.shape:
        return None
    return paired_difference(chosen, baseline, rng)
