"""The LR axis' figures and lines draw what they say: panels per LR level, squares at their
product coordinate, the tied weight decays as bars, the CLI's closing lines."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest

from balance.analysis import GRID_INDEX, LevelBest
from balance.cli_summary import lr_axis_lines
from balance.report.heatmaps import plot_balance
from balance.report.tradeoff_plots import plot_best_weight_decay, plot_lr_weight_decay

MULTIPLIERS = [0.5, 1.0, 2.0]
DECAYS = [0.0, 1e-4, 1e-3]


def test_each_lr_level_gets_its_own_heatmap_panel() -> None:
    keys = list(itertools.product([100], MULTIPLIERS, DECAYS, [0.0, 0.1]))
    grid = pd.DataFrame(
        {
            "mean": [0.9 + 0.001 * i for i in range(len(keys))],
            "std": 0.01,
            "seeds": 2,
            "trials": 1,
            "diverged": 0,
            "status": "done",
        },
        index=pd.MultiIndex.from_tuples(keys, names=GRID_INDEX),
    )
    chosen = keys[-1]
    figure = plot_balance(grid, "val_accuracy", chosen=chosen, indistinguishable=[keys[-2]])
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [f"batch size 100, LR x{m:g}" for m in MULTIPLIERS]
    marked = {
        ax.get_title(): sorted(str(p.get_gid()) for p in ax.patches if p.get_gid())
        for ax in figure.axes
        if ax.get_title()
    }
    assert marked["batch size 100, LR x2"] == ["chosen", "indistinguishable"]
    assert marked["batch size 100, LR x0.5"] == []


def test_without_dropout_the_lr_multiplier_runs_across_one_panel_per_batch_size() -> None:
    keys = list(itertools.product([100, 200], MULTIPLIERS, DECAYS, [0.0]))
    grid = pd.DataFrame(
        {"mean": 0.9, "std": 0.01, "seeds": 2, "trials": 1, "diverged": 0, "status": "done"},
        index=pd.MultiIndex.from_tuples(keys, names=GRID_INDEX),
    )
    chosen = (200, 2.0, 1e-4, 0.0)
    figure = plot_balance(grid, "val_accuracy", chosen=chosen)
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["batch size 100", "batch size 200"]
    assert panels[0].get_xlabel().startswith("LR multiplier")
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["0.5", "1", "2"]
    (outline,) = [p for p in panels[1].patches if p.get_gid() == "chosen"]
    assert outline.get_xy() == (2, 1)  # LR x2 is the third column, 1e-4 the second row


def tradeoff_cells() -> pd.DataFrame:
    rows = []
    for multiplier, wd in itertools.product(MULTIPLIERS, DECAYS):
        peak = 0.1 * multiplier
        rows.append(
            {
                "batch_size": 100,
                "lr_multiplier": multiplier,
                "weight_decay": wd,
                "dropout": 0.0,
                "max_lr": peak,
                "mean": 0.9 - abs(math.log10(peak * wd) + 4.5) / 100 if wd else 0.85,
                "low": 0.8,
                "high": 0.95,
                "lr_wd": peak * wd,
                "tau_epochs": math.inf if wd == 0 else 1 / (peak * wd * 40),
                "steps_per_epoch": 40.0,
            }
        )
    return pd.DataFrame(rows)


def test_the_product_panel_places_each_square_at_log_lr_times_wd() -> None:
    cells = tradeoff_cells()
    figure = plot_lr_weight_decay(cells, steps_per_epoch={100: 40.0})
    raw, product = figure.axes[0], figure.axes[1]
    assert raw.get_title() == "batch size 100: raw" and "product" in product.get_title()
    squares = [p for p in product.patches if p.get_width() > 0]
    centres = sorted(round(p.get_x() + p.get_width() / 2, 6) for p in squares)
    positive = cells[cells["weight_decay"] > 0]
    expected = sorted(round(math.log10(v), 6) for v in positive["lr_wd"])
    assert [c for c in centres if c in expected] == expected  # wd > 0 at their product
    assert len(squares) == len(cells)  # weight decay 0 in a column of its own
    tau = [child for child in product.get_children() if hasattr(child, "get_xlabel")]
    assert any("tau" in axis.get_xlabel() for axis in tau)


def test_the_best_weight_decay_plot_spans_the_tied_ones() -> None:
    levels = [
        LevelBest(100, 0.5, 0.05, 1e-3, 0.0, 0.9, 0.88, 0.92, (1e-4, 1e-3)),
        LevelBest(100, 1.0, 0.1, 1e-4, 0.0, 0.91, 0.89, 0.93, (1e-4,)),
        LevelBest(100, 2.0, 0.2, 0.0, 0.0, 0.9, 0.88, 0.92, (0.0, 1e-4, 1e-3)),
    ]
    ax = plot_best_weight_decay(levels, DECAYS).axes[0]
    (line,) = ax.get_lines()[:1]
    assert list(line.get_ydata()) == [2, 1, 0]  # grid positions of 1e-3, 1e-4, 0
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.0001", "0.001"]


def test_the_sweep_prints_the_trend_k_and_the_noise_scales() -> None:
    summary = {
        "lr_tradeoff": {
            "trend": {
                "direction": "falls",
                "slope": -0.8,
                "low": -1.2,
                "high": -0.3,
                "level": 0.9,
                "unit": "weight-decay grid steps per doubling of the LR",
            }
        },
        "batch_scaling": {
            "k": 0.6,
            "low": 0.2,
            "high": 1.1,
            "level": 0.9,
            "rules": {"linear": True, "sqrt": True},
        },
        "noise_scale": {"100": {"b_simple": 230.4}, "200": {"b_simple": None}},
    }
    lines = lr_axis_lines(summary)
    assert lines[0].startswith("best weight decay as the LR grows: falls (-0.80")
    assert "k = 0.60 (90% interval 0.20 .. 1.10)" in lines[1]
    assert (
        lines[2]
        == "gradient noise scale B_simple (first epoch): batch 100: 230, batch 200: unresolved"
    )
    assert lr_axis_lines({"lr_tradeoff": None, "batch_scaling": None}) == []


def test_no_levels_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        plot_best_weight_decay([], DECAYS)
