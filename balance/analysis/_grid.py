"""Balance grids: mean and std over seeds per cell, with every cell's status; range binning;
the table per batch size."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from balance.analysis._frames import GRID_INDEX, METRICS
from balance.config import StudyConfig, base_setting

GRID_COLUMNS = ["mean", "std", "seeds", "trials", "diverged", "status"]

CELL_STATUSES = ("done", "diverged", "running", "queued", "pruned", "failed", "missing")
"""A cell is ``done`` when a completed trial measured it, else the first that applies."""

_STATUS_OF_STATE = {
    "complete": "done",
    "running": "running",
    "waiting": "queued",
    "pruned": "pruned",
    "fail": "failed",
}


def grid_axes(config: StudyConfig) -> dict[str, list[float]] | None:
    """Every value of each cell axis in numeric order, or ``None`` when one axis is a range.

    An axis the study does not search has the one value of the base run.
    """
    axes: dict[str, list[float]] = {}
    base = base_setting(config.train)
    for name in GRID_INDEX:
        axis = getattr(config.search, name)
        if axis is None:
            axes[name] = [base[name]]
        elif isinstance(axis, list):
            axes[name] = sorted(axis)
        else:
            return None
    return axes


def grid_key(row: Any) -> tuple[Any, ...]:
    """A setting's key in a balance grid's index (:data:`GRID_INDEX` order, numeric types)."""
    return tuple(
        int(row[name]) if name == "batch_size" else float(row[name]) for name in GRID_INDEX
    )


def _trial_status(state: str, fail_reason: str) -> str:
    if state == "fail" and fail_reason == "diverged":
        return "diverged"
    return _STATUS_OF_STATE.get(state, "failed")


def balance_grid(
    runs: pd.DataFrame,
    metric: str,
    *,
    trials: pd.DataFrame | None = None,
    axes: dict[str, list[float]] | None = None,
) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``metric`` in every cell.

    Aggregates explicitly: every counted run of every trial in a cell is one sample
    (a cell trained twice pools both trials' seeds). The standard deviation is the
    population one (``ddof=0``), as in the trials' ``val_accuracy_std``.

    Args:
        runs: :func:`runs_frame`.
        metric: ``val_accuracy``, ``val_loss`` or ``gap``.
        trials: :func:`trials_frame`, so cells whose trials are queued, running,
            pruned or failed before any run finished get their status.
        axes: :func:`grid_axes`, so cells no trial reached are listed as ``missing``.

    Returns:
        A frame indexed by :data:`GRID_INDEX` in numeric order with
        the columns of :data:`GRID_COLUMNS`; ``mean`` and ``std`` are NaN where
        ``seeds`` is 0, and ``status`` is one of :data:`CELL_STATUSES`.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    counted = runs[runs["counted"]]
    stats = counted.groupby(GRID_INDEX)[metric].agg(
        mean="mean", std=lambda values: values.std(ddof=0), seeds="count"
    )
    statuses: dict[tuple[Any, ...], list[str]] = {}
    if trials is not None:
        known = trials[~trials["surplus"] & (trials["cell"] != "")]
        for row in known.itertuples(index=False):
            key = grid_key(row._asdict())
            statuses.setdefault(key, []).append(_trial_status(row.state, row.fail_reason))
    else:
        for (_, state), group in runs.groupby(["number", "state"]):
            key = grid_key(group.iloc[0])
            reason = "diverged" if group["diverged"].any() else ""
            statuses.setdefault(key, []).append(_trial_status(str(state), reason))
    keys = set(stats.index) | set(statuses)
    if axes is not None:
        keys |= set(itertools.product(*(axes[name] for name in GRID_INDEX)))
    index = pd.MultiIndex.from_tuples(sorted(keys), names=GRID_INDEX)
    grid = stats.reindex(index)
    grid["seeds"] = grid["seeds"].fillna(0).astype(int)
    grid["trials"] = [len(statuses.get(key, [])) for key in index]
    grid["diverged"] = [statuses.get(key, []).count("diverged") for key in index]
    grid["status"] = [
        "done"
        if seeds
        else next(
            (status for status in CELL_STATUSES[1:-1] if status in statuses.get(key, [])),
            "missing",
        )
        for key, seeds in zip(index, grid["seeds"], strict=True)
    ]
    return grid[GRID_COLUMNS]


def bin_ranges(frame: pd.DataFrame, config: StudyConfig, bins: int = 4) -> pd.DataFrame:
    """A copy of ``frame`` with every range axis replaced by the middle of its bin.

    Bins split the range evenly, in log space for a log range (whose middle is then
    geometric), so a Bayesian study can be summarised on a grid.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    binned = frame.copy()
    for name in GRID_INDEX:
        axis = getattr(config.search, name)
        if axis is None or isinstance(axis, list):
            continue
        if axis.log:
            edges = np.geomspace(axis.low, axis.high, bins + 1)
            middles = np.sqrt(edges[:-1] * edges[1:])
        else:
            edges = np.linspace(axis.low, axis.high, bins + 1)
            middles = (edges[:-1] + edges[1:]) / 2
        position = np.clip(np.searchsorted(edges, binned[name], side="right") - 1, 0, bins - 1)
        binned[name] = middles[position]
    return binned


def batch_size_table(
    grid: pd.DataFrame, max_lrs: dict[int, float], *, div_factor: float
) -> pd.DataFrame:
    """Per batch size: its best cell (mean, std, setting), the spread of its cells, its LRs.

    ``grid`` is a ``val_accuracy`` :func:`balance_grid`. Every batch size of the grid
    or of ``max_lrs`` has a row; one with no measured cell has NaN figures.
    """
    sizes = sorted(set(grid.index.get_level_values("batch_size")) | set(max_lrs))
    rows = []
    for size in sizes:
        cells = grid[(grid.index.get_level_values("batch_size") == size) & (grid["seeds"] > 0)]
        row: dict[str, Any] = {
            "batch_size": size,
            "best_mean": math.nan,
            "best_std": math.nan,
            "lr_multiplier": math.nan,
            "weight_decay": math.nan,
            "dropout": math.nan,
            "cells": len(cells),
            "cell_min": math.nan,
            "cell_max": math.nan,
        }
        if len(cells):
            key = cells["mean"].idxmax()
            setting = dict(zip(GRID_INDEX, key, strict=True))
            row.update(
                best_mean=cells.loc[key, "mean"],
                best_std=cells.loc[key, "std"],
                lr_multiplier=setting["lr_multiplier"],
                weight_decay=setting["weight_decay"],
                dropout=setting["dropout"],
                cell_min=cells["mean"].min(),
                cell_max=cells["mean"].max(),
            )
        max_lr = max_lrs.get(size, math.nan)
        row.update(max_lr=max_lr, min_lr=max_lr / div_factor)
        rows.append(row)
    return pd.DataFrame(rows).set_index("batch_size")
