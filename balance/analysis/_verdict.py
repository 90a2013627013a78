"""The verdict on a balance grid: the best cell, what moved it, and whether its lead is noise."""

from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd

from balance.analysis._frames import GRID_INDEX, METRIC_LABELS
from balance.cells import CellResult, rank


class Effect(NamedTuple):
    """How far one axis moved a metric: the spread of its marginal means.

    The marginal mean of a value is the mean of the cell means over the other axes
    (only cells with data count, so a sparse grid gives a rougher figure).
    """

    name: str
    spread: float
    best_value: float
    best_mean: float
    worst_value: float
    worst_mean: float
    levels: int


def regularizer_effects(grid: pd.DataFrame, *, higher_is_better: bool = True) -> list[Effect]:
    """Every axis with two or more measured values, the one that moved the metric most first."""
    data = grid[grid["seeds"] > 0].reset_index()
    effects = []
    for name in GRID_INDEX:
        if data[name].nunique() < 2:
            continue
        marginal = data.groupby(name)["mean"].mean()
        best = marginal.idxmax() if higher_is_better else marginal.idxmin()
        worst = marginal.idxmin() if higher_is_better else marginal.idxmax()
        effects.append(
            Effect(
                name,
                float(marginal.max() - marginal.min()),
                float(best),
                float(marginal[best]),
                float(worst),
                float(marginal[worst]),
                len(marginal),
            )
        )
    return sorted(effects, key=lambda effect: -effect.spread)


class Cell(NamedTuple):
    """One cell's setting and its seed statistics."""

    batch_size: int
    weight_decay: float
    dropout: float
    mean: float
    std: float
    seeds: int

    def setting(self) -> str:
        """The setting in words: ``weight decay 0.0001, dropout 0.1, batch size 64``."""
        return (
            f"weight decay {self.weight_decay:.3g}, dropout {self.dropout:.3g}, "
            f"batch size {self.batch_size}"
        )


class Verdict(NamedTuple):
    """The balance found, what moved it, and whether the top cells differ beyond seed noise.

    ``within_noise`` is ``None`` when it cannot be told (fewer than two cells with
    data, or a cell of the two trained with one seed). ``near_best`` counts the
    other cells whose mean lies within the best cell's seed std of the best.
    """

    metric: str
    best: Cell | None
    runner_up: Cell | None
    difference: float | None
    within_noise: bool | None
    near_best: int
    cells: int
    effects: list[Effect]
    sentences: list[str]


AXIS_WORDS = {"batch_size": "batch size", "weight_decay": "weight decay", "dropout": "dropout"}
_STATUS_WORDS = {
    "diverged": "diverged",
    "running": "still running",
    "queued": "queued",
    "pruned": "pruned",
    "failed": "failed",
    "missing": "without a trial",
}


def _cell(key: tuple[Any, ...], row: pd.Series) -> Cell:
    return Cell(
        int(key[0]),
        float(key[1]),
        float(key[2]),
        float(row["mean"]),
        float(row["std"]),
        int(row["seeds"]),
    )


def balance_verdict(
    grid: pd.DataFrame,
    *,
    chosen: CellResult | None = None,
    effects: list[Effect] | None = None,
    higher_is_better: bool = True,
    metric: str = "val_accuracy",
    unit: str = "cell",
) -> Verdict:
    """The verdict on a :func:`balance_grid`, in numbers and in plain sentences.

    The best cell is ``chosen``, the study's one best cell
    (:attr:`balance.record.StudyRecord.best`); without it, the grid's cells are
    ranked by the same rule (:func:`balance.cells.rank`). The runner-up is the
    next by that rule. They are compared by their difference against their seed
    standard deviations: a difference no larger than the larger std is within
    seed noise. ``effects`` default to :func:`regularizer_effects` of the grid
    (pass those of a binned grid for a Bayesian study). ``unit`` names a grid row in
    the sentences: ``cell``, or ``trial`` where each row is one trial's setting.
    """
    words = METRIC_LABELS.get(metric, metric)
    effects = (
        regularizer_effects(grid, higher_is_better=higher_is_better) if effects is None else effects
    )
    measured = grid[grid["seeds"] > 0]
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(
        measured.index,
        key=lambda key: rank(
            sign * float(measured.loc[key, "mean"]),
            int(measured.loc[key, "seeds"]),
            dict(zip(GRID_INDEX, key, strict=True)),
        ),
    )
    first = None if chosen is None else tuple(chosen.params[name] for name in GRID_INDEX)
    if first in order:
        order = [first, *(key for key in order if key != first)]
    data = measured.loc[order] if order else measured
    others = grid[grid["seeds"] == 0]["status"].value_counts()
    tail = [
        f"{count} {unit}{'s' if count > 1 else ''} {_STATUS_WORDS[status]}"
        for status, count in others.items()
    ]
    if data.empty:
        sentences = [f"No completed trial has measured {words} yet."]
        if tail:
            sentences.append("So far: " + ", ".join(tail) + ".")
        return Verdict(metric, None, None, None, None, 0, 0, effects, sentences)
    best = _cell(data.index[0], data.iloc[0])
    runner = _cell(data.index[1], data.iloc[1]) if len(data) > 1 else None
    tied = int(((data["mean"] - best.mean).abs() <= 1e-12).sum())
    sentences = [f"The balance found: {best.setting()}, with {words} {_mean_std(best)}."]
    if tied > 1:
        sentences.append(
            f"{tied} {unit}s tie at this mean; the one with more seeds, then the smallest "
            "weight decay, dropout and batch size, is named."
        )
    for position, effect in enumerate(effects):
        lead = "moved it most" if position == 0 and len(effects) > 1 else "moved it"
        sentences.append(
            f"{AXIS_WORDS[effect.name].capitalize()} {lead}: by {effect.spread:.3f} "
            f"(mean over the other axes {effect.worst_mean:.3f} at {effect.worst_value:.3g}, "
            f"{effect.best_mean:.3f} at {effect.best_value:.3g}; {effect.levels} values)."
        )
    difference, within, near = None, None, 0
    if best.seeds >= 2:
        near = int(((data["mean"].iloc[1:] - best.mean).abs() <= best.std).sum())
    if runner is not None:
        difference = abs(best.mean - runner.mean)
        if difference <= 1e-12:
            within = True
            sentences.append(
                f"The runner-up ({runner.setting()}) ties with it: the top "
                f"{unit}s cannot be told apart."
            )
        elif best.seeds >= 2 and runner.seeds >= 2:
            noise = max(best.std, runner.std)
            within = difference <= noise
            judged = (
                f"within seed noise: the top {unit}s cannot be told apart with these seeds"
                if within
                else f"beyond seed noise: the best {unit} stands out"
            )
            sentences.append(
                f"The runner-up ({runner.setting()}) reached {_mean_std(runner)}; the "
                f"difference {difference:.3f} is {'not larger' if within else 'larger'} than "
                f"their seed std ({best.std:.3f} and {runner.std:.3f}), so it is {judged}."
            )
            sentences.append(
                f"{near} other {unit}{'s lie' if near != 1 else ' lies'} within one seed std "
                f"({best.std:.3f}) of the best."
            )
        else:
            sentences.append(
                f"The runner-up ({runner.setting()}) reached {runner.mean:.3f}, "
                f"{difference:.3f} away; with one seed per {unit} the seed noise is unknown "
                "(set seeds >= 2 to tell real differences from noise)."
            )
    if unit == "cell":
        sentences += _edge_sentences(grid, best)
    if tail:
        sentences.append("Not measured: " + ", ".join(tail) + ".")
    return Verdict(metric, best, runner, difference, within, near, len(data), effects, sentences)


def _edge_sentences(grid: pd.DataFrame, best: Cell) -> list[str]:
    """Warn when the best cell sits on the grid's edge: the balance may lie beyond it."""
    sentences = []
    for name in ("weight_decay", "dropout"):
        values = sorted(grid.index.get_level_values(name).unique())
        value = getattr(best, name)
        if len(values) < 2:
            continue
        if value == values[-1]:
            side = "largest"
        elif value == values[0] and value > 0:
            side = "smallest"
        else:
            continue
        sentences.append(
            f"The best {AXIS_WORDS[name]}, {value:.3g}, is the {side} in the grid: the balance "
            f"may lie beyond it; extend the grid past {value:.3g} to find out."
        )
    return sentences


def _mean_std(cell: Cell) -> str:
    if cell.seeds >= 2:
        return f"{cell.mean:.3f} ± {cell.std:.3f} (mean ± std over {cell.seeds} seeds)"
    return f"{cell.mean:.3f} (one seed)"
