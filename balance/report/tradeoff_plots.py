"""Figures of the LR as a regularizer: the best weight decay per LR level, the LR x weight
decay heatmaps in raw and product coordinates, and accuracy against a run's cost per batch size.

Built on the Agg canvas without pyplot, like :mod:`balance.report.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from balance.analysis import BatchSizeBest, LevelBest
from balance.report.heatmaps import format_value
from balance.report.plots import facets


def plot_best_weight_decay(levels: Sequence[LevelBest], weight_decays: Sequence[float]) -> Figure:
    """The best weight decay (grid position) at each LR level, one line per batch size; the
    bar spans the weight decays tied with the best (not separated from it)."""
    if not levels:
        raise ValueError("levels must hold at least one LR level")
    decays = sorted(weight_decays)
    figure = Figure(figsize=(6.4, 3.9), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    sizes = sorted({level.batch_size for level in levels})
    for offset, size in zip(np.linspace(-0.04, 0.04, len(sizes)), sizes, strict=True):
        own = sorted((lvl for lvl in levels if lvl.batch_size == size), key=lambda lvl: lvl.max_lr)
        x = [math.log2(lvl.lr_multiplier) + offset for lvl in own]
        y = [decays.index(lvl.weight_decay) for lvl in own]
        low = [decays.index(min(lvl.tied)) for lvl in own]
        high = [decays.index(max(lvl.tied)) for lvl in own]
        yerr = [np.subtract(y, low), np.subtract(high, y)]
        ax.errorbar(x, y, yerr=yerr, fmt="o-", capsize=5, label=f"batch size {size}")
    multipliers = sorted({level.lr_multiplier for level in levels})
    ax.set_xticks([math.log2(m) for m in multipliers], [f"x{format_value(m)}" for m in multipliers])
    ax.set_yticks(range(len(decays)), [format_value(wd) for wd in decays])
    ax.set_ylim(-0.5, len(decays) - 0.5)
    ax.set_xlabel("LR multiplier (of stage 1's max LR, log scale)")
    ax.set_ylabel("best weight decay")
    ax.set_title("best weight decay per LR level (bar: weight decays tied with it)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def _best_over_dropout(cells: pd.DataFrame) -> pd.DataFrame:
    order = cells.sort_values("mean", ascending=False)
    return order.drop_duplicates(["batch_size", "lr_multiplier", "weight_decay"])


def plot_lr_weight_decay(cells: pd.DataFrame, *, steps_per_epoch: dict[int, float]) -> Figure:
    """Per batch size, validation accuracy over LR x weight decay twice: raw (left, weight
    decay across) and in the product coordinate lr x wd (right: each LR row shifted by
    its LR, so a ridge of constant product stands vertical; the top axis reads the
    decay's time scale tau = 1 / (lr x wd) in epochs). Each square is the best cell over
    dropout; weight decay 0 sits in a column of its own on the right panel's left.

    ``cells`` is :attr:`balance.analysis.LrTradeoff.cells`.
    """
    best = _best_over_dropout(cells)
    sizes = sorted(best["batch_size"].unique())
    figure, axes = facets(2 * len(sizes), 5.4, 3.6, columns=2)
    low, high = float(best["mean"].min()), float(best["mean"].max())
    norm_high = high if high > low else low + 0.01
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    norm = Normalize(low, norm_high)
    scale = ScalarMappable(norm=norm, cmap="viridis")
    decays = sorted(best["weight_decay"].unique())
    positive = [wd for wd in decays if wd > 0]
    # the closest two weight decays set the squares' width, so no two overlap
    width = float(np.min(np.diff(np.log10(positive)))) if len(positive) > 1 else 1.0
    for index, size in enumerate(sizes):
        raw, product = axes[2 * index], axes[2 * index + 1]
        here = best[best["batch_size"] == size]
        multipliers = sorted(here["lr_multiplier"].unique())
        peaks = {
            m: float(here.loc[here["lr_multiplier"] == m, "max_lr"].iloc[0]) for m in multipliers
        }
        for row in here.itertuples(index=False):
            y = multipliers.index(row.lr_multiplier)
            colour = scale.to_rgba(row.mean)
            text_colour = "white" if norm(row.mean) < 0.5 else "black"
            x = decays.index(row.weight_decay)
            raw.add_patch(Rectangle((x, y), 1, 1, facecolor=colour, edgecolor="white"))
            raw.text(x + 0.5, y + 0.5, f"{row.mean:.3f}", ha="center", va="center",
                     fontsize=7, color=text_colour)  # fmt: skip
            if row.weight_decay > 0:
                left = math.log10(row.lr_wd) - width / 2
            else:
                left = math.log10(min(here["lr_wd"][here["lr_wd"] > 0], default=1.0)) - 2 * width
            product.add_patch(Rectangle((left, y), width, 1, facecolor=colour, edgecolor="white"))
            product.text(left + width / 2, y + 0.5, f"{row.mean:.3f}", ha="center",
                         va="center", fontsize=6, color=text_colour)  # fmt: skip
        labels = [f"x{format_value(m)} ({peaks[m]:.2g})" for m in multipliers]
        for ax in (raw, product):
            ax.set_ylim(0, len(multipliers))
            ax.set_yticks([i + 0.5 for i in range(len(multipliers))], labels)
            ax.set_ylabel("LR multiplier (peak LR)")
        raw.set_xlim(0, len(decays))
        raw.set_xticks([i + 0.5 for i in range(len(decays))], [format_value(d) for d in decays])
        raw.set_xlabel("weight decay")
        raw.set_title(f"batch size {size}: raw")
        finite = np.log10(here["lr_wd"][here["lr_wd"] > 0])
        if len(finite):
            zero = float(finite.min()) - 2 * width
            product.set_xlim(zero - width, float(finite.max()) + width)
            ticks = np.arange(math.ceil(finite.min() - width / 2), math.floor(finite.max()) + 1)
            product.set_xticks(
                [zero + width / 2, *ticks], ["0\n(tau \u221e)", *[f"1e{t:.0f}" for t in ticks]]
            )
            # weight decay 0 has no product: its column stands apart, under no tau
            product.axvline(zero + 1.25 * width, color="#777777", linewidth=0.8, linestyle=":")
            per_epoch = steps_per_epoch.get(int(size), math.nan)
            if math.isfinite(per_epoch) and per_epoch > 0:
                shift = math.log10(per_epoch)

                def to_tau(x: Any, shift: float = shift) -> Any:
                    # log10 tau in epochs = -log10(lr x wd) - log10(steps per epoch); the
                    # map is its own inverse
                    return -np.asarray(x) - shift

                top = product.secondary_xaxis("top", functions=(to_tau, to_tau))
                top.set_xlabel("log10 tau (epochs)", fontsize="small")
        product.set_xlabel("lr x weight decay (peak LR)")
        product.set_title(f"batch size {size}: product", pad=18)
    figure.colorbar(scale, ax=axes, shrink=0.9, label="validation accuracy (best over dropout)")
    return figure


def plot_batch_size_cost(results: Sequence[BatchSizeBest]) -> Figure:
    """Each batch size's best cell: validation accuracy (interval bar) against its wall time
    per run, labelled with its steps; equal epochs for all."""
    if not results:
        raise ValueError("results must hold at least one batch size")
    figure = Figure(figsize=(6.4, 3.9), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for result in results:
        colour = "tab:blue" if result.indistinguishable else "tab:red"
        ax.errorbar(
            [result.train_time],
            [result.mean],
            yerr=[[result.mean - result.low], [result.high - result.mean]],
            fmt="o",
            color=colour,
            capsize=5,
        )
        ax.annotate(
            f"B={result.batch_size}, {result.steps:.0f} steps",
            (result.train_time, result.high),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize="small",
        )
    ax.set_xlabel("wall time per run (s)")
    ax.set_ylabel("validation accuracy of its best cell")
    ax.set_title("best cell per batch size (red: worse than the best beyond noise)", fontsize=10)
    ax.margins(x=0.25, y=0.25)
    ax.grid(alpha=0.3)
    return figure
