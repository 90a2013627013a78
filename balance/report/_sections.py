"""The report's sections: each computes its data, draws its figures and returns template values."""

from __future__ import annotations

import base64
import io
from typing import Any, NamedTuple

import pandas as pd
from matplotlib.figure import Figure

from balance.analysis import (
    AXIS_WORDS,
    METRIC_LABELS,
    METRICS,
    NoiseAnalysis,
    balance_grid,
    balance_verdict,
    batch_size_table,
    bin_ranges,
    grid_axes,
    grid_key,
    param_importances,
    regularizer_effects,
)
from balance.config import FloatRange, StudyConfig, base_setting
from balance.range_test import SUGGESTION_RULES
from balance.record import StudyRecord
from balance.report import _data as data
from balance.report import heatmaps, plots

FIGURE_DPI = 100
TOP_TRIALS = 5
BAYES_BINS = 4
_STATE_CLASSES = {
    "complete": "ok",
    "pruned": "pruned",
    "running": "running",
    "waiting": "queued",
    "diverged": "diverged",
    "fail": "failed",
}


class Picture(NamedTuple):
    """An embedded figure: its ``data:`` URI and the alternative text that describes it."""

    uri: str
    alt: str


def figure_uri(figure: Figure, *, dpi: int = FIGURE_DPI) -> str:
    """``figure`` as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(figure: Figure, alt: str) -> Picture:
    return Picture(figure_uri(figure), alt)


def range_test_section(record: StudyRecord) -> dict[str, Any]:
    """Stage 1: where each max LR came from, the range tests drawn, every rule's answer."""
    tests = record.stage_one.range_tests
    section: dict[str, Any] = {
        "stage_one_words": data.stage_one_words(record.config, record.stage_one),
        "range_figure": None,
        "range_table": "",
        "range_tests": tests,
    }
    if tests:
        section["range_figure"] = _picture(
            plots.plot_range_tests(tests),
            "LR range test: training loss against learning rate per batch size, "
            "with each rule's suggestion and the chosen max and min LR",
        )
        table = data.range_test_table(tests)
        section["range_table"] = _html_table(
            table,
            {**{column: _lr for column in (*SUGGESTION_RULES, "max_lr", "min_lr")}},
        )
    return section


def schedule_section(
    config: StudyConfig, lrs: dict[int, float], steps: dict[int, int]
) -> dict[str, Any]:
    """The LR and momentum of every step the trials took, per batch size."""
    traces = data.schedule_traces(config.train, lrs, steps)
    waiting = sorted(set(lrs) - set(traces))
    notes = []
    if not lrs:
        notes.append("The schedule is drawn once stage 1 has fixed the max LR.")
    elif waiting:
        notes.append(
            "Not drawn yet for batch size "
            + ", ".join(map(str, waiting))
            + ": no run of that size has finished, so its step count is not known."
        )
    if config.search.lr_multiplier is not None and lrs:
        notes.append(
            "Drawn at stage 1's max LR (LR multiplier 1); a trial at multiplier m follows "
            "the same curve with every LR times m (momentum unchanged)."
        )
    figure = None
    if traces:
        figure = _picture(
            plots.plot_schedules(traces, policy=config.train.policy),
            "learning rate and momentum of every step, per batch size",
        )
    return {
        "schedule_figure": figure,
        "schedule_notes": notes,
        "policy_words": data.policy_words(config.train),
    }


def balance_section(
    record: StudyRecord,
    runs: pd.DataFrame,
    trials: pd.DataFrame,
    noise: NoiseAnalysis | None = None,
) -> dict[str, Any]:
    """The heatmaps (or the scatter of a Bayesian study), the verdict and the effects tables.

    The best cell is the record's (:attr:`balance.record.StudyRecord.best`) in the
    verdict, in every heatmap's outline and as the scatter's star; ``noise``
    (:func:`balance.analysis.analyse_noise`) makes the verdict's comparisons, the
    dashed outlines of the cells indistinguishable from the best, and the table of
    tests of no effect.
    """
    config = record.config
    best_cell = record.best
    axes = grid_axes(config)
    grids = {metric: balance_grid(runs, metric, trials=trials, axes=axes) for metric in METRICS}
    accuracy = grids["val_accuracy"]
    measured = bool((accuracy["seeds"] > 0).any())
    figures: list[tuple[str, Picture]] = []
    effects = None
    if axes is None:
        binned = bin_ranges(runs, config, bins=BAYES_BINS)
        effects = regularizer_effects(balance_grid(binned, "val_accuracy"))
    verdict = balance_verdict(
        accuracy,
        chosen=best_cell,
        effects=effects,
        unit="cell" if axes is not None else "trial",
        noise=noise,
    )
    close = [] if noise is None else [grid_key(cell.params) for cell in noise.indistinguishable]
    chosen = None if verdict.best is None else grid_key(verdict.best._asdict())
    if axes is not None and len(accuracy):
        for metric in METRICS if measured else ("val_accuracy",):
            figure = heatmaps.plot_balance(
                grids[metric], metric, chosen=chosen, indistinguishable=close
            )
            figures.append(
                (
                    metric,
                    _picture(
                        figure,
                        f"heatmap of {METRIC_LABELS[metric]} over weight decay and "
                        "dropout, one panel per batch size and LR multiplier",
                    ),
                )
            )
    elif axes is None and measured:
        weight_decay = config.search.weight_decay
        log = isinstance(weight_decay, FloatRange) and weight_decay.log
        best = None if best_cell is None else best_cell.trials[0]
        limits = {
            name: (axis.low, axis.high)
            for name, axis in config.search.axes().items()
            if isinstance(axis, FloatRange)
        }
        # a searched LR multiplier gets a panel per bin (a list axis: per value)
        placed = trials.assign(
            lr_multiplier=bin_ranges(trials, config, bins=BAYES_BINS)["lr_multiplier"]
        )
        for metric in METRICS:
            figure = heatmaps.plot_balance_scatter(
                placed, metric, log_weight_decay=log, best_number=best, limits=limits
            )
            figures.append(
                (
                    metric,
                    _picture(
                        figure,
                        f"scatter of trials over weight decay and dropout coloured by "
                        f"{METRIC_LABELS[metric]}",
                    ),
                )
            )
    effect_rows = []
    for metric in METRICS:
        grid = (
            grids[metric]
            if axes is not None
            else balance_grid(bin_ranges(runs, config, bins=BAYES_BINS), metric)
        )
        for effect in regularizer_effects(grid, higher_is_better=metric == "val_accuracy"):
            effect_rows.append(
                {
                    "metric": METRIC_LABELS[metric],
                    "axis": effect.name,
                    "spread": effect.spread,
                    "best value": effect.best_value,
                    "worst value": effect.worst_value,
                }
            )
    effects_table = ""
    if effect_rows:
        effects_frame = pd.DataFrame(effect_rows).pivot(
            index="axis", columns="metric", values="spread"
        )
        order = [METRIC_LABELS[metric] for metric in METRICS]
        effects_frame = effects_frame[[name for name in order if name in effects_frame]]
        effects_frame.index = [AXIS_WORDS[name] for name in effects_frame.index]
        effects_table = _html_table(
            effects_frame.rename_axis("axis").reset_index(), {}, precision=3
        )
    return {
        "grid_study": axes is not None,
        "balance_figures": figures,
        "measured": measured,
        "verdict": verdict,
        "noise": noise,
        "noise_table": "" if noise is None else _noise_table(noise),
        "effects_table": effects_table,
        "bins": BAYES_BINS,
        "accuracy_grid": accuracy,
    }


def batch_size_section(
    grid: pd.DataFrame, lrs: dict[int, float], config: StudyConfig
) -> dict[str, Any]:
    """The best cell per batch size with its seed spread, and the LRs each size got."""
    table = batch_size_table(grid, lrs, div_factor=config.train.div_factor)
    figure = None
    if len(table) and ((grid["seeds"] > 0).any() or lrs):
        figure = _picture(
            heatmaps.plot_batch_sizes(table, grid),
            "best validation accuracy and max LR per batch size",
        )
    formats = {"stage 1's max_lr": _lr, "stage 1's min_lr": _lr, "weight decay": _g}
    formats |= {"dropout": _g, "its LR multiplier": _g}
    shown = table.reset_index().rename(
        columns={
            "batch_size": "batch size",
            "lr_multiplier": "its LR multiplier",
            "max_lr": "stage 1's max_lr",
            "min_lr": "stage 1's min_lr",
            "best_mean": "best cell's val accuracy",
            "best_std": "its seed std",
            "weight_decay": "weight decay",
            "cells": "cells measured",
            "cell_min": "worst cell",
            "cell_max": "best cell",
        }
    )
    return {
        "batch_figure": figure,
        "batch_table": _html_table(shown, formats) if len(table) else "",
    }


def _noise_table(noise: NoiseAnalysis) -> str:
    """Each axis' test of no effect: the effect with its interval, the p-values, the call."""
    rows = [
        {
            "axis": AXIS_WORDS[test.name],
            "values": test.levels,
            "best value": f"{test.best_value:.3g}",
            "worst value": f"{test.worst_value:.3g}",
            "effect (points)": f"{100 * test.effect:.2f}",
            f"{100 * noise.level:.0f}% interval": f"{100 * test.low:.2f} to {100 * test.high:.2f}",
            "p": f"{test.p_value:.3g}",
            "p (Holm)": f"{test.p_holm:.3g}",
            "detectable": "yes" if test.detectable else "no",
        }
        for test in noise.axes
    ]
    return _html_table(pd.DataFrame(rows), {}) if rows else ""


def test_section(record: StudyRecord, noise: NoiseAnalysis | None = None) -> dict[str, Any]:
    """The chosen cell and the baseline on the test split, in a figure and in words.

    With ``noise``, the words give the paired chosen-minus-baseline difference and
    say whether it is beyond noise.
    """
    final, config = record.final, record.config
    if final is None:
        return {
            "test_figure": None,
            "test_words": [
                "The test split is measured once the sweep has finished (it chooses nothing)."
            ],
        }
    curves = data.test_curves(final, config)
    words = data.test_words(final, curves)
    if noise is not None and noise.test is not None:
        words.append(data.test_difference_words(noise.test))
    best = record.best
    if best is not None and best.params != {**base_setting(config.train), **final.params}:
        words.append(
            f"These runs are of trial #{final.trial}; the best cell is now trial "
            f"#{best.trials[0]}'s (the study went on after the test evaluation)."
        )
    if config.baseline is None:
        words.append("The study file names no baseline, so there is nothing to compare with.")
    figure = None
    if len(curves):
        figure = _picture(
            plots.plot_test_curves(curves),
            "test accuracy against iterations, chosen 1cycle run and baseline",
        )
    return {"test_figure": figure, "test_words": words}


def importance_section(record: StudyRecord) -> dict[str, Any]:
    """fANOVA importances of the searched parameters, or why there are none."""
    result = param_importances(record)
    figure = None
    if result.values:
        figure = _picture(
            plots.plot_importances(result.values, evaluator=result.evaluator),
            "parameter importances for validation accuracy",
        )
    return {"importances": result, "importance_figure": figure}


def trials_section(record: StudyRecord, trials: pd.DataFrame) -> dict[str, Any]:
    """Learning curves of the best trials and the table of every trial."""
    curves = data.learning_curves(record, top=TOP_TRIALS)
    figure = None
    if len(curves):
        figure = _picture(plots.plot_learning_curves(curves), "learning curves of the best trials")
    table = data.trial_table(trials)
    formats = {
        "weight_decay": _g,
        "dropout": _g,
        "max_lr": _lr,
        "val_accuracy": _f4,
        "val_accuracy_std": _f4,
        "val_loss": _f4,
        "train_loss": _f4,
        "gap": _f4,
        "duration_s": "{:.1f}".format,
    }
    styled = ""
    if len(table):
        classes = pd.DataFrame("", index=table.index, columns=table.columns)
        for index, state in table["state"].items():
            classes.loc[index, :] = _STATE_CLASSES.get(str(state), "")
        styler = (
            table.style.hide(axis="index")
            .format(formats, na_rep="\u2014")
            .set_td_classes(classes)
            .set_table_attributes('class="trials"')
        )
        styled = styler.to_html()
    return {"curves_figure": figure, "top_trials": TOP_TRIALS, "trials_table": styled}


# --------------------------------------------------------------------------- tables


def _g(value: float) -> str:
    return f"{value:g}"


def _lr(value: float | None) -> str:
    return "\u2014" if value is None or pd.isna(value) else f"{value:.3g}"


def _f4(value: float) -> str:
    return f"{value:.4f}"


def _html_table(frame: pd.DataFrame, formats: dict[str, Any], *, precision: int = 4) -> str:
    styler = frame.style.hide(axis="index").format(precision=precision, na_rep="\u2014")
    if formats:
        styler = styler.format(
            {key: value for key, value in formats.items() if key in frame.columns}, na_rep="\u2014"
        )
    return str(styler.set_table_attributes('class="data"').to_html())
