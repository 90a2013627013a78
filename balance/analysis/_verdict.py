"""The verdict on a balance grid: the best cell, what moved it, and whether its lead is noise."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pandas as pd

from balance.analysis._comparisons import POWER
from balance.analysis._frames import GRID_INDEX, METRIC_LABELS
from balance.analysis._noise import CellEstimate, NoiseAnalysis
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
    lr_multiplier: float = 1.0

    def setting(self) -> str:
        """The setting in words: ``weight decay 0.0001, dropout 0.1, batch size 64``.

        An LR multiplier other than 1 (the range test's max LR) is named too.
        """
        return setting_words(self._asdict())


def setting_words(params: dict[str, Any]) -> str:
    """A setting in words, as every sentence of the verdict names one."""
    words = (
        f"weight decay {params['weight_decay']:.3g}, dropout {params['dropout']:.3g}, "
        f"batch size {params['batch_size']}"
    )
    multiplier = float(params.get("lr_multiplier", 1.0))
    if multiplier != 1.0:
        words += f", LR {multiplier:.3g} x stage 1's max LR"
    return words


class Verdict(NamedTuple):
    """The balance found, what moved it, and whether the top cells differ beyond seed noise.

    ``within_noise`` is ``None`` when it cannot be told (fewer than two cells with
    data, or a cell of the two trained with one seed). ``near_best`` counts the
    other cells whose mean lies within the best cell's seed std of the best. With
    ``noise``, ``within_noise`` says whether the runner-up is indistinguishable from
    the best and ``near_best`` counts the other indistinguishable cells.
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
    noise: NoiseAnalysis | None = None


AXIS_WORDS = {
    "batch_size": "batch size",
    "weight_decay": "weight decay",
    "dropout": "dropout",
    "lr_multiplier": "LR multiplier",
}
_STATUS_WORDS = {
    "diverged": "diverged",
    "running": "still running",
    "queued": "queued",
    "pruned": "pruned",
    "failed": "failed",
    "missing": "without a trial",
}


def _cell(key: tuple[Any, ...], row: pd.Series) -> Cell:
    setting = dict(zip(GRID_INDEX, key, strict=True))
    return Cell(
        int(setting["batch_size"]),
        float(setting["weight_decay"]),
        float(setting["dropout"]),
        float(row["mean"]),
        float(row["std"]),
        int(row["seeds"]),
        float(setting["lr_multiplier"]),
    )


def balance_verdict(
    grid: pd.DataFrame,
    *,
    chosen: CellResult | None = None,
    effects: list[Effect] | None = None,
    higher_is_better: bool = True,
    metric: str = "val_accuracy",
    unit: str = "cell",
    noise: NoiseAnalysis | None = None,
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

    With ``noise`` (:func:`balance.analysis.analyse_noise`, validation accuracy
    only) the comparisons carry their noise instead: the best cell's interval, the
    cells indistinguishable from it, each axis' test of no effect (only detectable
    effects are ranked), what separating the top two would take, and the runner-up
    is within noise when it is indistinguishable from the best.
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
    if noise is not None and metric == "val_accuracy":
        sentences = _noise_sentences(noise, unit, tied)
        if unit == "cell":
            sentences += _edge_sentences(grid, best)
        if tail:
            sentences.append("Not measured: " + ", ".join(tail) + ".")
        within = None if noise.runner_up is None else noise.runner_up.indistinguishable
        return Verdict(
            metric,
            best,
            runner,
            None if runner is None else abs(best.mean - runner.mean),
            within,
            max(0, len(noise.indistinguishable) - 1),
            len(data),
            effects,
            sentences,
            noise,
        )
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
            seed_noise = max(best.std, runner.std)
            within = difference <= seed_noise
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
    for name in ("weight_decay", "dropout", "lr_multiplier"):
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


def _setting(cell: CellEstimate) -> str:
    return setting_words(cell.params)


def _points(value: float) -> str:
    return f"{100 * value:.2f} points"


def _noise_sentences(noise: NoiseAnalysis, unit: str, tied: int) -> list[str]:
    """The verdict's sentences when every comparison carries its noise."""
    best, level = noise.best, f"{100 * noise.level:.0f}%"
    seeds = "one seed" if best.seeds == 1 else f"{best.seeds} seeds"
    sentences = [
        f"The balance found: {_setting(best)}, with validation accuracy {best.mean:.3f} "
        f"({level} interval {best.low:.3f} to {best.high:.3f}, over {seeds} and "
        f"{noise.examples:,} validation examples)."
    ]
    if tied > 1:
        sentences.append(
            f"{tied} {unit}s tie at this mean; the one with more seeds, then the smallest "
            "weight decay, dropout and batch size, is named."
        )
    others = len(noise.cells) - 1
    close = len(noise.indistinguishable) - 1
    tests = f"at the {100 * noise.alpha:.0f}% level, corrected for comparing {others + 1} {unit}s"
    if others == 0:
        sentences.append(f"Only one {unit} is measured: there is nothing to compare it with.")
    elif not math.isfinite(noise.critical):
        sentences.append(
            f"With one seed per {unit} the seed noise is unknown, so no {unit} is called "
            "worse than the best (set seeds >= 2 to tell real differences from noise)."
        )
    elif close == 0:
        sentences.append(
            f"Every other {unit} is worse beyond noise ({tests}): the best stands out."
        )
    else:
        if close == others:
            which = f"The other {unit}" if others == 1 else f"All {others} other {unit}s"
        else:
            which = f"{close} of the {others} other {unit}s"
        sentences.append(
            f"{which} cannot be told apart from it ({tests}); "
            f"{'they are' if close > 1 else 'it is'} marked on the heatmaps."
        )
    detectable = sorted((t for t in noise.axes if t.detectable), key=lambda t: -abs(t.effect))
    for position, test in enumerate(detectable):
        lead = (
            "has the largest detectable effect"
            if position == 0 and len(detectable) > 1
            else ("has a detectable effect")
        )
        sentences.append(
            f"{AXIS_WORDS[test.name].capitalize()} {lead}: {_points(test.effect)} between "
            f"{test.best_value:.3g} (best) and {test.worst_value:.3g} (worst) ({level} interval "
            f"{100 * test.low:.2f} to {_points(test.high)}; p = {test.p_holm:.2g}, Holm)."
        )
    untested = [t for t in noise.axes if not math.isfinite(t.p_value)]
    if untested:
        sentences.append(
            "Not testable: "
            + ", ".join(AXIS_WORDS[t.name] for t in untested)
            + " (no two of its values share the other axes and a seed, so no permutation"
            " moves a run between them)."
        )
    quiet = [t for t in noise.axes if not t.detectable and math.isfinite(t.p_value)]
    if quiet:
        sentences.append(
            "No detectable effect: "
            + "; ".join(
                f"{AXIS_WORDS[t.name]} (p = {t.p_holm:.2g}; {_points(t.effect)} between its best "
                f"and worst value, {level} interval {100 * t.low:.2f} to {_points(t.high)})"
                for t in quiet
            )
            + "."
        )
    sentences += _separation_sentences(noise, unit)
    return sentences


def _separation_sentences(noise: NoiseAnalysis, unit: str) -> list[str]:
    """What separating the best from the runner-up would take, in plain words."""
    runner, plan = noise.runner_up, noise.separation
    if runner is None or plan is None:
        return []
    lead = (
        f"The runner-up ({_setting(runner)}, {runner.mean:.3f}) trails by "
        f"{_points(plan.difference)}"
    )
    if plan.detectable is None:
        return [
            f"{lead}; with one seed per {unit} the seed noise is unknown (set seeds >= 2 "
            "to say what separating them would take)."
        ]
    sentences = [
        f"{lead}; this study separates two {unit}s with {100 * POWER:.0f}% probability only "
        f"when they differ by {_points(plan.detectable)} or more."
    ]
    if plan.difference <= 0:
        sentences.append("The best and the runner-up tie: no number of seeds separates them.")
        return sentences
    if runner.indistinguishable:
        ways = []
        if plan.seeds_needed is not None:
            ways.append(f"about {plan.seeds_needed} seeds per {unit} at this validation split")
        if plan.examples_needed is not None:
            ways.append(f"about {plan.examples_needed:,} validation examples at {plan.seeds} seeds")
        if ways:
            sentences.append("Separating these two would take " + " or ".join(ways) + ".")
        elif plan.scale_needed is not None and plan.scale_needed <= 100:
            sentences.append(
                f"Separating these two would take about {plan.scale_needed:.0f} times the "
                "seeds and the validation examples together."
            )
        else:
            sentences.append(
                "Separating these two is out of practical reach (over 100 times the seeds "
                "and validation examples): treat them as equally good."
            )
    return sentences
