"""Cells: the key of a setting, and the one definition of the best cell.

A cell is one setting of the searched axes. Its result pools every counted seed run
of every trial that trained it; :func:`best_cell` is what the test evaluation, the
verdict, every heatmap outline, the scatter and ``summary.json`` call the best.
"""

from __future__ import annotations

import ast
import statistics
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from balance.config import SEARCHED

if TYPE_CHECKING:
    from balance.record import TrialRecord
    from balance.runs import SeedRun


def cell_key(params: dict[str, Any]) -> str:
    """A stable text key of the searched values, e.g. ``weight_decay=0.0005|dropout=0.1``.

    Only searched parameters belong in ``params``: the key of a queued cell and of
    the trial that trains it must be equal. Axes come in :data:`~balance.config.SEARCHED`
    order; the key is stored, so that order must never change.
    """
    return "|".join(f"{name}={params[name]!r}" for name in SEARCHED if name in params)


def parse_cell_key(key: str) -> dict[str, Any]:
    """The values of a :func:`cell_key` (``{}`` for an empty key)."""
    values: dict[str, Any] = {}
    for part in filter(None, key.split("|")):
        name, _, text = part.partition("=")
        values[name] = ast.literal_eval(text)
    return values


class CellResult(NamedTuple):
    """One setting's validation accuracy over its counted runs (every trial of it pooled)."""

    key: str
    params: dict[str, Any]
    mean: float
    std: float  # population std over seeds (ddof 0)
    seeds: int
    trials: tuple[int, ...]  # the trials that measured it, by number


def repeated_runs(trials: Iterable[TrialRecord]) -> set[tuple[int, int]]:
    """``(trial number, seed)`` of each counted run that repeats one of an earlier trial.

    The same cell trained with the same seed is the same run, bit for bit on one
    device: counting it twice would fake a seed. The earliest trial's run counts;
    later ones are repeats (a sampler re-proposing a cell before balance gave
    repeats new seeds, or two workers racing for one cell).
    """
    seen: set[tuple[str, int]] = set()
    repeats: set[tuple[int, int]] = set()
    for trial in sorted(trials, key=lambda trial: trial.number):
        if trial.surplus:
            continue
        key = trial.cell or cell_key(trial.params)
        for run in trial.counted_runs:
            if (key, run.seed) in seen:
                repeats.add((trial.number, run.seed))
            seen.add((key, run.seed))
    return repeats


def distinct_runs(trials: Iterable[TrialRecord], key: str) -> list[SeedRun]:
    """The counted runs of cell ``key``, each (cell, seed) once, earliest trial first."""
    trials = sorted(trials, key=lambda trial: trial.number)
    repeats = repeated_runs(trials)
    return [
        run
        for trial in trials
        if not trial.surplus and (trial.cell or cell_key(trial.params)) == key
        for run in trial.counted_runs
        if (trial.number, run.seed) not in repeats
    ]


def cell_results(trials: Iterable[TrialRecord], base: dict[str, Any]) -> list[CellResult]:
    """Every cell with a counted run, with its mean and std of validation accuracy.

    Each distinct (cell, seed) run counts once (:func:`repeated_runs`). ``base``
    gives unsearched axes their value (the base run's), so every cell has all of
    :data:`~balance.config.SEARCHED`.
    """
    trials = list(trials)
    repeats = repeated_runs(trials)
    pooled: dict[str, tuple[dict[str, Any], list[float], list[int]]] = {}
    for trial in trials:
        runs = [run for run in trial.counted_runs if (trial.number, run.seed) not in repeats]
        if not runs or trial.surplus:
            continue
        params = {name: trial.params.get(name, base[name]) for name in SEARCHED}
        key = trial.cell or cell_key(trial.params)
        _, values, numbers = pooled.setdefault(key, (params, [], []))
        values.extend(float(run.val_accuracy) for run in runs if run.val_accuracy is not None)
        numbers.append(trial.number)
    return [
        CellResult(key, params, statistics.fmean(v), statistics.pstdev(v), len(v), tuple(n))
        for key, (params, v, n) in pooled.items()
    ]


def rank(loss: float, seeds: int, params: dict[str, Any]) -> tuple[float, ...]:
    """The sort key that ranks cells, best first: the one rule behind :func:`best_cell`.

    ``loss`` is the cell's mean with the sign that makes lower better (minus the
    mean validation accuracy). Ties (equal means) go to the cell measured with more
    seeds, then to the first in numeric order of weight decay, dropout, batch size and
    LR multiplier: the least regularized setting.
    """
    return (loss, -seeds, *(float(params[name]) for name in SEARCHED))


def best_cell(cells: Iterable[CellResult]) -> CellResult | None:
    """The best cell: the highest mean validation accuracy over seeds, ties as :func:`rank`.

    ``None`` when no cell has a counted run.
    """
    return min(cells, key=lambda cell: rank(-cell.mean, cell.seeds, cell.params), default=None)
