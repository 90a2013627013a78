"""Figures of the balance: heatmaps of weight decay x dropout, the Bayesian scatter, batch sizes.

Built on the Agg canvas without pyplot, like :mod:`balance.report.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from balance.analysis import METRIC_LABELS
from balance.report.plots import facets

# --------------------------------------------------------------------------- the balance

METRIC_CMAPS = {"val_accuracy": "viridis", "val_loss": "viridis_r", "gap": "RdBu_r"}
EMPTY_CELL_LABELS = {
    "diverged": "diverged",
    "running": "running",
    "queued": "queued",
    "pruned": "pruned",
    "failed": "failed",
    "missing": "\u2014",
}
EMPTY_CELL_HATCH = {"diverged": "xxx"}


def format_cell(mean: float, std: float, seeds: int) -> str:
    """A heatmap cell's annotation: ``mean`` over a ``±std`` line (the mean alone for one seed)."""
    return f"{mean:.3f}\n\u00b1{std:.3f}" if seeds >= 2 else f"{mean:.3f}"


def format_value(value: float) -> str:
    """A numeric axis label: ``0``, ``1e-05``, ``0.0005``, ``0.2``, ``64``."""
    return f"{value:g}"


def _limits(values: Any, metric: str) -> tuple[float, float]:
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if metric == "gap":
        edge = max(abs(low), abs(high), 1e-9)
        return -edge, edge
    if low == high:
        return low - 0.01, high + 0.01
    return low, high


def balance_layout(grid: pd.DataFrame) -> tuple[str, list[str]]:
    """The heatmaps' column axis and the axes that split them into panels.

    Dropout runs across each panel; a study that sweeps the LR multiplier but not
    dropout puts the LR multiplier across instead (one panel per batch size, LR x
    weight decay inside); otherwise each (batch size, LR multiplier) is a panel.
    """
    counts = {name: grid.index.get_level_values(name).nunique() for name in grid.index.names}
    column = (
        "lr_multiplier" if counts["dropout"] == 1 and counts["lr_multiplier"] > 1 else "dropout"
    )
    return column, [name for name in ("batch_size", "lr_multiplier", "dropout") if name != column]


COLUMN_LABELS = {"dropout": "dropout", "lr_multiplier": "LR multiplier (x stage 1's max LR)"}


def plot_balance(
    grid: pd.DataFrame,
    metric: str,
    *,
    chosen: tuple[Any, ...] | None = None,
    indistinguishable: Collection[tuple[Any, ...]] = (),
) -> Figure:
    """Seaborn heatmaps of weight decay (rows, growing upwards) x dropout (or LR multiplier,
    :func:`balance_layout`), one panel per batch size (and LR multiplier).

    ``grid`` is a :func:`balance.analysis.balance_grid`. All facets share one colour
    scale; each measured cell reads ``mean ± std`` over seeds; a cell with no
    measurement is hatched and says why (``diverged``, ``running``, ``queued``,
    ``pruned``, ``failed``, or ``—`` for no trial). Axes are in numeric order. The
    ``chosen`` cell (a grid key: ``batch_size, lr_multiplier, weight_decay, dropout``)
    is outlined in black; the ``indistinguishable`` cells (validation accuracy within
    noise of the chosen one) get a dashed outline.
    """
    import seaborn as sns
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    if not len(grid):
        raise ValueError("grid has no cells to draw")
    names = list(grid.index.names)
    column, panel_names = balance_layout(grid)
    panels = sorted({tuple(key[names.index(n)] for n in panel_names) for key in grid.index})
    several = {n: grid.index.get_level_values(n).nunique() > 1 for n in panel_names}
    weight_decays = sorted(grid.index.get_level_values("weight_decay").unique())
    columns = sorted(grid.index.get_level_values(column).unique())
    width = max(3.8, 0.95 * len(columns) + 1.6)
    height = max(2.8, 0.62 * len(weight_decays) + 1.5)
    figure, axes = facets(len(panels), width, height, columns=3)
    vmin, vmax = _limits(grid["mean"], metric)
    cmap = METRIC_CMAPS[metric]

    def place(key: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, Any]]:
        setting = dict(zip(names, key, strict=True))
        return tuple(setting[n] for n in panel_names), (setting["weight_decay"], setting[column])

    for ax, panel in zip(axes, panels, strict=True):
        cells = grid.xs(panel, level=panel_names).reorder_levels(["weight_decay", column])
        table = cells.reset_index()
        means = table.pivot(index="weight_decay", columns=column, values="mean")
        means = means.reindex(index=weight_decays, columns=columns).astype(float)
        annot = [[_annotation(cells, wd, value) for value in columns] for wd in weight_decays]
        sns.heatmap(
            means,
            ax=ax,
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            annot=annot,
            fmt="",
            cbar=False,
            linewidths=1,
            linecolor="white",
            annot_kws={"fontsize": 8},
            xticklabels=[format_value(v) for v in columns],
            yticklabels=[format_value(v) for v in weight_decays],
        )
        ax.invert_yaxis()  # numeric order upwards: the smallest weight decay at the bottom
        ax.tick_params(axis="y", rotation=0)
        ax.set_xlabel(COLUMN_LABELS[column])
        ax.set_ylabel("weight decay")
        setting = dict(zip(panel_names, panel, strict=True))
        title = f"batch size {setting['batch_size']}"
        if several.get("lr_multiplier"):
            title += f", LR x{format_value(setting['lr_multiplier'])}"
        if several.get("dropout"):
            title += f", dropout {format_value(setting['dropout'])}"
        ax.set_title(title)
        for row, wd in enumerate(weight_decays):
            for index, value in enumerate(columns):
                key = (wd, value)
                status = cells.loc[key, "status"] if key in cells.index else "missing"
                if key in cells.index and cells.loc[key, "seeds"] > 0:
                    continue
                ax.add_patch(
                    Rectangle(
                        (index, row),
                        1,
                        1,
                        facecolor="#eeeeee",
                        edgecolor="#9a9a9a",
                        linewidth=0,
                        hatch=EMPTY_CELL_HATCH.get(status, "///"),
                        zorder=2,
                    )
                )
                ax.text(
                    index + 0.5,
                    row + 0.5,
                    EMPTY_CELL_LABELS[status],
                    ha="center",
                    va="center",
                    fontsize=8,
                    zorder=3,
                    gid=f"empty-{status}",
                    color="#b00020" if status == "diverged" else "#333333",
                    bbox={
                        "boxstyle": "round,pad=0.15",
                        "facecolor": "white",
                        "edgecolor": "none",
                        "alpha": 0.85,
                    },
                )
        for outlined in indistinguishable:
            where, (wd, value) = place(tuple(outlined))
            if where != panel or tuple(outlined) == chosen:
                continue
            ax.add_patch(
                Rectangle(
                    (columns.index(value) + 0.06, weight_decays.index(wd) + 0.06),
                    0.88,
                    0.88,
                    fill=False,
                    edgecolor="black",
                    linewidth=1.6,
                    linestyle=(0, (3, 2)),
                    zorder=4,
                    gid="indistinguishable",
                )
            )
        if chosen is not None and place(tuple(chosen))[0] == panel:
            wd, value = place(tuple(chosen))[1]
            ax.add_patch(
                Rectangle(
                    (columns.index(value), weight_decays.index(wd)),
                    1,
                    1,
                    fill=False,
                    edgecolor="black",
                    linewidth=3,
                    zorder=4,
                    gid="chosen",
                )
            )
    if (grid["seeds"] > 0).any():
        scale = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
        figure.colorbar(scale, ax=axes, shrink=0.9, label=METRIC_LABELS[metric])
    return figure


def _annotation(cells: pd.DataFrame, weight_decay: float, value: float) -> str:
    key = (weight_decay, value)
    if key not in cells.index or cells.loc[key, "seeds"] == 0:
        return ""
    row = cells.loc[key]
    return format_cell(float(row["mean"]), float(row["std"]), int(row["seeds"]))


def plot_balance_scatter(
    trials: pd.DataFrame,
    metric: str,
    *,
    log_weight_decay: bool,
    best_number: int | None = None,
    limits: Mapping[str, tuple[float, float]] | None = None,
) -> Figure:
    """Trials on weight decay (x) x dropout (y), coloured by ``metric``, one panel per batch size
    and LR multiplier (a range axis' bins: bin ``trials["lr_multiplier"]`` first).

    For Bayesian studies, whose settings are not a grid. ``trials`` is a
    :func:`balance.analysis.trials_frame`. Completed trials are coloured (mean over
    seeds, one shared scale); diverged trials are red crosses, pruned ones hollow
    grey circles; ``best_number`` gets a black star. ``limits`` (the searched ranges
    of ``weight_decay`` and ``dropout``) frame the panels, so the search space's
    coverage shows. With nothing to draw a panel says so instead of staying blank.
    """
    from matplotlib.colors import Normalize

    placed = trials[~trials["surplus"] & (trials["cell"] != "")]
    pairs = zip(placed["batch_size"], placed["lr_multiplier"], strict=True)
    panels: list[tuple[Any, Any]] = sorted({(int(b), float(m)) for b, m in pairs}) or [(None, None)]
    several_lrs = len({multiplier for _, multiplier in panels}) > 1
    figure, axes = facets(len(panels), 4.8, 3.9, columns=3, sharex=True, sharey=True)
    complete = placed[placed["state"] == "complete"]
    vmin, vmax = _limits(complete[metric], metric)
    norm = Normalize(vmin, vmax)
    cmap = METRIC_CMAPS[metric]
    positive = placed.loc[placed["weight_decay"] > 0, "weight_decay"]
    for ax, (size, multiplier) in zip(axes, panels, strict=True):
        here = (
            placed[(placed["batch_size"] == size) & (placed["lr_multiplier"] == multiplier)]
            if size is not None
            else placed
        )
        done = here[here["state"] == "complete"]
        diverged = here[here["fail_reason"] == "diverged"]
        pruned = here[here["state"] == "pruned"]
        points = ax.scatter(
            done["weight_decay"],
            done["dropout"],
            c=done[metric],
            cmap=cmap,
            norm=norm,
            s=55,
            edgecolors="black",
            linewidths=0.4,
            label="completed",
        )
        if len(pruned):
            ax.scatter(
                pruned["weight_decay"],
                pruned["dropout"],
                facecolors="none",
                edgecolors="gray",
                s=45,
                label="pruned",
            )
        if len(diverged):
            ax.scatter(
                diverged["weight_decay"],
                diverged["dropout"],
                marker="x",
                color="#b00020",
                s=55,
                label="diverged",
            )
        best = done[done["number"] == best_number]
        if len(best):
            ax.scatter(
                best["weight_decay"],
                best["dropout"],
                marker="*",
                s=320,
                facecolors="none",
                edgecolors="black",
                linewidths=1.5,
                label="best",
            )
        if log_weight_decay:
            if (here["weight_decay"] <= 0).any():
                ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1e-6)
            else:
                ax.set_xscale("log")
        for name, set_limits, log in (
            ("weight_decay", ax.set_xlim, log_weight_decay),
            ("dropout", ax.set_ylim, False),
        ):
            if limits and name in limits:
                low, high = limits[name]
                pad = (high / low) ** 0.03 if log and low > 0 else 0.03 * (high - low)
                set_limits((low / pad, high * pad) if log and low > 0 else (low - pad, high + pad))
        ax.set_xlabel("weight decay")
        ax.set_ylabel("dropout")
        title = f"batch size {size}" if size is not None else "no trial placed yet"
        if several_lrs:
            title += f", LR x{multiplier:.2g}"
        ax.set_title(title)
        if here.empty or (done.empty and diverged.empty and pruned.empty):
            ax.text(
                0.5,
                0.5,
                "no finished trial yet",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#555555",
            )
        elif len(here) > len(done):
            ax.legend(fontsize="x-small", loc="best")
        ax.grid(alpha=0.3)
    figure.colorbar(points, ax=axes, shrink=0.9, label=METRIC_LABELS[metric])
    return figure


# --------------------------------------------------------------------------- batch sizes


def plot_batch_sizes(table: pd.DataFrame, grid: pd.DataFrame) -> Figure:
    """Left: every cell's mean validation accuracy per batch size (dots) and the best cell
    with its seed std (black bar). Right: each batch size's max and min LR (log axis).

    ``table`` is :func:`balance.analysis.batch_size_table`, ``grid`` the
    ``val_accuracy`` grid it came from. Batch sizes sit in numeric order.
    """
    figure = Figure(figsize=(10.0, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    accuracy_ax, lr_ax = figure.subplots(1, 2)
    sizes = list(table.index)
    positions = range(len(sizes))
    measured = grid[grid["seeds"] > 0]
    for position, size in zip(positions, sizes, strict=True):
        means = measured[measured.index.get_level_values("batch_size") == size]["mean"]
        jitter = [position + 0.12 * ((i % 5) - 2) / 2 for i in range(len(means))]
        accuracy_ax.scatter(
            jitter,
            means,
            color="tab:blue",
            alpha=0.5,
            s=18,
            label="a cell's mean" if position == 0 else None,
        )
    accuracy_ax.errorbar(
        list(positions),
        table["best_mean"],
        yerr=table["best_std"].fillna(0),
        fmt="o",
        color="black",
        capsize=5,
        markersize=7,
        label="best cell, \u00b1 seed std",
    )
    accuracy_ax.set_xticks(list(positions), [str(size) for size in sizes])
    accuracy_ax.set_xlabel("batch size")
    accuracy_ax.set_ylabel("validation accuracy")
    accuracy_ax.set_title("best validation accuracy per batch size")
    accuracy_ax.legend(fontsize="small")
    accuracy_ax.set_xlim(-0.6, len(sizes) - 0.4)
    lr_ax.bar(list(positions), table["max_lr"], color="tab:orange", alpha=0.8, label="max_lr")
    lr_ax.scatter(
        list(positions),
        table["min_lr"],
        color="black",
        marker="_",
        s=300,
        label="min_lr (1cycle start)",
    )
    for position, lr in zip(positions, table["max_lr"], strict=True):
        if math.isfinite(lr):
            lr_ax.annotate(f"{lr:.3g}", (position, lr), ha="center", va="bottom", fontsize="small")
    lr_ax.set_yscale("log")
    finite = [lr for lr in table["min_lr"].tolist() + table["max_lr"].tolist() if math.isfinite(lr)]
    if finite:
        lr_ax.set_ylim(min(finite) / 2, max(finite) * 4)
    lr_ax.set_xticks(list(positions), [str(size) for size in sizes])
    lr_ax.set_xlabel("batch size")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title("max LR each batch size got (stage 1)")
    lr_ax.legend(fontsize="small")
    return figure
