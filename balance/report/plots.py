"""Matplotlib figures of balance's results.

Figures are built as :class:`matplotlib.figure.Figure` objects on the Agg canvas,
without pyplot: nothing is shown, no global backend is switched and no figure is
left open in pyplot's registry.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from balance.range_test import RangeTestResult
from balance.schedule import ScheduleTrace

RULE_COLORS = {
    "onset": "tab:brown",
    "steepest": "tab:orange",
    "valley": "tab:green",
    "minimum": "tab:purple",
    "accuracy": "tab:red",
}


def new_figure(figsize: tuple[float, float] = (7.0, 4.5)) -> Figure:
    """A fresh Agg-backed figure (not registered with pyplot)."""
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_range_test(result: RangeTestResult) -> Figure:
    """Loss and smoothed loss against LR (log axis), with every suggestion marked.

    Each rule's LR is a labelled dashed vertical line; the chosen ``max_lr`` is a
    solid line and the 1cycle range ``[min_lr, max_lr]`` is shaded. When validation
    accuracy was measured it is drawn on a twin axis. The title names the batch
    size and the super-convergence verdict. With no points it warns and returns
    the empty figure.
    """
    figure = new_figure()
    draw_range_test(figure.add_subplot(), result)
    return figure


def draw_range_test(ax: Axes, result: RangeTestResult) -> None:
    """Draw :func:`plot_range_test` on ``ax`` (a panel of a larger figure)."""
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(
        f"LR range test, batch size {result.batch_size}: "
        f"super-convergence {result.diagnostic.verdict}"
    )
    finite = [
        (lr, loss)
        for lr, loss in zip(result.lrs, result.losses, strict=True)
        if lr > 0 and math.isfinite(loss)
    ]
    if not finite:
        warnings.warn("range test result has no finite points to plot", stacklevel=3)
        return
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    ax.plot(
        result.lrs,
        result.smoothed,
        color="tab:blue",
        linewidth=2,
        label="smoothed loss (zero-phase)",
    )
    ax.set_ylim(*_loss_limits(result))
    ax.axvspan(
        result.min_lr,
        result.max_lr,
        color="tab:gray",
        alpha=0.15,
        label=f"1cycle range {result.min_lr:.2g}..{result.max_lr:.2g}",
    )
    ax.axvline(
        result.max_lr,
        color="black",
        linewidth=1.5,
        label=f"max_lr {result.max_lr:.3g} ({result.rule})",
    )
    for name, lr in result.suggestions.items():
        if lr is not None and lr > 0:
            ax.axvline(
                lr,
                color=RULE_COLORS.get(name, "tab:gray"),
                linestyle="--",
                linewidth=1,
                label=f"{name} {lr:.3g}",
            )
    if result.diverged_at is not None:
        ax.axvline(
            result.lrs[result.diverged_at],
            color="tab:red",
            linestyle=":",
            linewidth=1,
            label=f"stopped at {result.lrs[result.diverged_at]:.3g}",
        )
    handles, labels = ax.get_legend_handles_labels()
    if result.val_accuracies:
        twin = ax.twinx()
        twin.plot(
            result.val_lrs,
            result.val_accuracies,
            color="tab:red",
            marker="o",
            markersize=3,
            linewidth=1,
            label="validation accuracy",
        )
        twin.set_ylabel("validation accuracy")
        twin.set_ylim(0.0, 1.0)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper left", fontsize="small", framealpha=0.8)


def _loss_limits(result: RangeTestResult) -> tuple[float, float]:
    # Show the descent in full; clip the explosion after the minimum.
    smoothed = [value for value in result.smoothed if math.isfinite(value)]
    losses = [value for value in result.losses if math.isfinite(value)]
    if not smoothed:
        return min(losses) * 0.9, max(losses) * 1.1
    lowest = smoothed.index(min(smoothed))
    top = max(max(smoothed[: lowest + 1]), smoothed[0]) * 1.25
    bottom = min(min(losses), min(smoothed))
    return min(0.0, bottom) if bottom < 0 else bottom * 0.9, max(top, bottom * 1.1 + 1e-12)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix), creating folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# --------------------------------------------------------------------------- several tests


def facets(
    count: int, width: float, height: float, columns: int = 2, **kwargs: Any
) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` panels of ``width`` x ``height`` inches, ``columns`` a row."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False, **kwargs)
    axes = [ax for row in grid for ax in row]
    for spare in axes[count:]:
        spare.set_visible(False)
    return figure, axes[:count]


def plot_range_tests(results: Mapping[int, RangeTestResult]) -> Figure:
    """One :func:`plot_range_test` panel per batch size, smallest first, two a row."""
    if not results:
        raise ValueError("results must hold at least one range test")
    figure, axes = facets(len(results), 7.0, 4.5)
    for ax, size in zip(axes, sorted(results), strict=True):
        draw_range_test(ax, results[size])
    return figure


def plot_schedules(traces: Mapping[int, ScheduleTrace], *, policy: str) -> Figure:
    """LR (top) and momentum or beta1 (bottom) of every step, one line per batch size."""
    figure = Figure(figsize=(9.0, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    lr_ax, momentum_ax = figure.subplots(2, 1, sharex=True)
    for size in sorted(traces):
        trace = traces[size]
        steps = range(1, len(trace.lr) + 1)
        lr_ax.plot(
            steps, trace.lr, linewidth=1.5, label=f"batch size {size} ({len(trace.lr)} steps)"
        )
        momentum_ax.plot(steps, trace.momentum, linewidth=1.5)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title(f"schedule actually used: {policy}")
    lr_ax.legend(fontsize="small")
    momentum_ax.set_ylabel("momentum / beta1")
    momentum_ax.set_xlabel("iteration (optimizer step)")
    return figure


# --------------------------------------------------------------------------- test and trials


def plot_test_curves(curves: pd.DataFrame) -> Figure:
    """Test accuracy against iterations per run (mean over seeds; band: min to max seed)."""
    figure = Figure(figsize=(9.0, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    colors = {"chosen": "tab:blue", "baseline": "tab:gray"}
    for (kind, label), runs in curves.groupby(["kind", "run"], sort=False):
        per_step = runs.groupby("step")["test_accuracy"]
        mean, low, high = per_step.mean(), per_step.min(), per_step.max()
        color = colors.get(str(kind), "tab:green")
        ax.plot(
            mean.index, mean, marker="o", markersize=3, color=color, linewidth=2, label=str(label)
        )
        if runs["seed"].nunique() > 1:
            ax.fill_between(mean.index, low, high, color=color, alpha=0.2)
    ax.set_xlabel("iteration (optimizer step)")
    ax.set_ylabel("test accuracy")
    ax.set_title("super-convergence: test accuracy against iterations (band: seeds' range)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return figure


def plot_importances(values: Mapping[str, float], *, evaluator: str) -> Figure:
    """Horizontal bars of parameter importances, the largest at the top."""
    figure = Figure(figsize=(7.0, 0.6 * max(len(values), 1) + 1.3), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    names = sorted(values, key=lambda name: values[name])
    ax.barh(names, [values[name] for name in names], color="tab:blue")
    for position, name in enumerate(names):
        ax.text(values[name], position, f" {values[name]:.2f}", va="center", fontsize="small")
    ax.set_xlim(0, max(1.0, max(values.values(), default=0) * 1.15))
    ax.set_xlabel("importance for validation accuracy (sums to 1)")
    ax.set_title(evaluator, fontsize="medium")
    return figure


def plot_learning_curves(curves: pd.DataFrame) -> Figure:
    """Validation accuracy (left) and train/validation loss (right) per epoch of a few trials."""
    figure = Figure(figsize=(10.0, 3.9), layout="constrained")
    FigureCanvasAgg(figure)
    accuracy_ax, loss_ax = figure.subplots(1, 2, sharex=True)
    for index, (label, trial) in enumerate(curves.groupby("label", sort=False)):
        color = f"C{index}"
        accuracy_ax.plot(
            trial["epoch"], trial["val_accuracy"], marker="o", color=color, label=str(label)
        )
        loss_ax.plot(trial["epoch"], trial["train_loss"], marker="o", color=color)
        loss_ax.plot(trial["epoch"], trial["val_loss"], marker="s", linestyle="--", color=color)
    accuracy_ax.set_xlabel("epoch")
    accuracy_ax.set_ylabel("validation accuracy")
    accuracy_ax.legend(fontsize="x-small")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss (solid: train, dashed: validation)")
    accuracy_ax.xaxis.get_major_locator().set_params(integer=True)
    return figure
