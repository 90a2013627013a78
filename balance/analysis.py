"""From stored trials to pandas frames, a coverage audit, a JSON summary and a verdict.

Seed aggregation is explicit: :func:`runs_frame` has one row per seed run and
:func:`balance_grid` averages them per cell, so a report never shows the latest
trial of a cell where it means the mean over seeds.
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from balance.config import SEARCHED, StudyConfig

FRAME_COLUMNS = [
    "number",
    "state",
    "weight_decay",
    "dropout",
    "batch_size",
    "max_lr",
    "val_accuracy",
    "val_accuracy_std",
    "val_loss",
    "train_loss",
    "gap",
    "seeds_done",
    "steps",
    "duration_s",
    "diverged_step",
    "diverged_lr",
    "fail_reason",
    "surplus",
    "cell",
]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def trial_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The searched values a trial has: queued (``fixed_params``) or suggested ones."""
    params = dict(trial.system_attrs.get("fixed_params", {}))
    params.update(trial.params)
    return params


def trial_row(trial: optuna.trial.FrozenTrial, config: StudyConfig) -> dict[str, Any]:
    """One trial as a flat row; metrics are means over the seeds it finished."""
    params = trial_params(trial)
    runs = [run for run in trial.user_attrs.get("runs", []) if run.get("val_accuracy") is not None]
    done = [run for run in runs if not run.get("diverged")]
    val_acc = [run["val_accuracy"] for run in done]
    val_loss = [run["val_loss"] for run in done]
    train_loss = [run["train_loss"] for run in done]
    diverged = trial.user_attrs.get("diverged") or {}
    duration = trial.duration.total_seconds() if trial.duration is not None else math.nan
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name.lower(),
        **{name: params.get(name, getattr(config.train, name)) for name in SEARCHED},
        "max_lr": trial.user_attrs.get("max_lr", math.nan),
        "val_accuracy": trial.value if trial.value is not None else _mean(val_acc),
        "val_accuracy_std": statistics.pstdev(val_acc)
        if len(val_acc) > 1
        else (0.0 if val_acc else math.nan),
        "val_loss": _mean(val_loss),
        "train_loss": _mean(train_loss),
        "seeds_done": len(done),
        "steps": sum(int(run.get("steps", 0)) for run in trial.user_attrs.get("runs", [])),
        "duration_s": duration,
        "diverged_step": diverged.get("step", math.nan),
        "diverged_lr": diverged.get("lr", math.nan),
        "fail_reason": trial.user_attrs.get("fail_reason", ""),
        "surplus": bool(trial.user_attrs.get("surplus", False)),
        "cell": trial.user_attrs.get("cell", ""),
    }
    row["gap"] = row["val_loss"] - row["train_loss"]
    if trial.state == TrialState.FAIL and not row["fail_reason"]:
        row["fail_reason"] = "diverged" if diverged else "interrupted"
    return row


def trials_frame(study: optuna.Study, config: StudyConfig) -> pd.DataFrame:
    """All trials of a study, one row each, with the columns of :data:`FRAME_COLUMNS`."""
    rows = [trial_row(trial, config) for trial in study.get_trials(deepcopy=False)]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def audit(frame: pd.DataFrame, config: StudyConfig) -> dict[str, Any]:
    """Grid coverage: cells missing, trained more than once, or only failed.

    A cell is trained by a completed, pruned or diverged trial; surplus trials
    (stopped before training because the queue was empty) train nothing.
    """
    from balance.study._space import cell_key, grid_cells

    trained = frame[
        ~frame["surplus"]
        & (frame["state"].isin(["complete", "pruned"]) | (frame["fail_reason"] == "diverged"))
    ]
    counts = trained["cell"].value_counts()
    result: dict[str, Any] = {
        "trained_trials": len(trained),
        "surplus_trials": int(frame["surplus"].sum()),
        "duplicated": sorted(counts[counts > 1].index.tolist()),
    }
    if config.sampler == "grid":
        expected = {cell_key(cell) for cell in grid_cells(config.search)}
        failed_cells = set(frame.loc[frame["state"] == "fail", "cell"]) - set(trained["cell"])
        result["cells"] = len(expected)
        result["missing"] = sorted(expected - set(trained["cell"]))
        result["failed_only"] = sorted(failed_cells & expected)
    return result


def summarize(
    study: optuna.Study,
    config: StudyConfig,
    frame: pd.DataFrame,
    *,
    url: str,
    wall_time: float | None = None,
) -> dict[str, Any]:
    """The JSON summary: max LR per batch size, best setting, validation and test figures."""
    import torch

    states = frame["state"].value_counts().to_dict()
    complete = frame[frame["state"] == "complete"].sort_values("val_accuracy", ascending=False)
    best = complete.iloc[0] if len(complete) else None
    final = study.user_attrs.get("final", {})
    max_lr = study.user_attrs.get("max_lr", {})
    return {
        "study": config.name,
        "storage": url,
        "sampler": config.sampler,
        "pruner": config.pruner,
        "seeds": config.seeds,
        "epochs_per_trial": config.train.epochs,
        "policy": config.train.policy,
        "max_lr": max_lr,
        "min_lr": {size: lr / config.train.div_factor for size, lr in max_lr.items()},
        "trials": {str(k): int(v) for k, v in states.items()},
        "diverged": int((frame["fail_reason"] == "diverged").sum()),
        "steps_total": int(frame["steps"].sum()),
        "best": None
        if best is None
        else {
            "trial": int(best["number"]),
            "params": {name: _jsonable(best[name]) for name in SEARCHED},
            "val_accuracy": float(best["val_accuracy"]),
            "val_accuracy_std": float(best["val_accuracy_std"]),
        },
        "test": final,
        "audit": audit(frame, config),
        "wall_time_s": wall_time,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "device": config.train.device
            if config.train.device != "auto"
            else ("cuda" if torch.cuda.is_available() else "cpu"),
        },
    }


def write_results(
    study: optuna.Study,
    config: StudyConfig,
    out_dir: Path,
    *,
    url: str,
    wall_time: float | None = None,
) -> dict[str, Any]:
    """Write ``trials.csv``, ``trials.parquet`` and ``summary.json`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study, config)
    frame.to_csv(out_dir / "trials.csv", index=False)
    frame.to_parquet(out_dir / "trials.parquet", index=False)
    summary = summarize(study, config, frame, url=url, wall_time=wall_time)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    return summary


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- seeds and cells

CELL = ["batch_size", "weight_decay", "dropout"]
"""The index of a balance grid: one cell per batch size, weight decay and dropout."""

RUN_COLUMNS = [
    "number",
    "state",
    *CELL,
    "seed",
    "val_accuracy",
    "val_loss",
    "train_loss",
    "gap",
    "steps",
    "diverged",
    "counted",
]

GRID_COLUMNS = ["mean", "std", "seeds", "trials", "diverged", "status"]

METRICS = ("val_accuracy", "val_loss", "gap")
"""Metrics a balance grid can aggregate; only ``val_accuracy`` is better when higher."""

CELL_STATUSES = ("done", "diverged", "running", "queued", "pruned", "failed", "missing")
"""A cell is ``done`` when a completed trial measured it, else the first that applies."""

_STATUS_OF_STATE = {
    "complete": "done",
    "running": "running",
    "waiting": "queued",
    "pruned": "pruned",
    "fail": "failed",
}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def runs_frame(study: optuna.Study, config: StudyConfig) -> pd.DataFrame:
    """One row per seed run the trials recorded (surplus trials, which train nothing, left out).

    ``gap`` is ``val_loss - train_loss`` of that run; ``train_loss`` is the mean over the
    last epoch's steps with dropout on. ``counted`` marks the runs a balance grid averages:
    finished runs of completed trials (a pruned run stopped early, a running trial may
    still change, a diverged trial has no final metrics).
    """
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus"):
            continue
        params = trial_params(trial)
        state = trial.state.name.lower()
        for run in trial.user_attrs.get("runs", []):
            val_loss, train_loss = _number(run.get("val_loss")), _number(run.get("train_loss"))
            diverged = bool(run.get("diverged"))
            rows.append(
                {
                    "number": trial.number,
                    "state": state,
                    **{name: params.get(name, getattr(config.train, name)) for name in CELL},
                    "seed": int(run.get("seed", 0)),
                    "val_accuracy": _number(run.get("val_accuracy")),
                    "val_loss": val_loss,
                    "train_loss": train_loss,
                    "gap": val_loss - train_loss,
                    "steps": int(run.get("steps", 0)),
                    "diverged": diverged,
                    "counted": state == "complete"
                    and not diverged
                    and run.get("val_accuracy") is not None,
                }
            )
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return frame.astype(
        {
            "number": int,
            "batch_size": int,
            "weight_decay": float,
            "dropout": float,
            "seed": int,
            "steps": int,
            "diverged": bool,
            "counted": bool,
            **dict.fromkeys((*METRICS, "train_loss"), float),
        }
    )


def grid_axes(config: StudyConfig) -> dict[str, list[float]] | None:
    """Every value of each cell axis in numeric order, or ``None`` when one axis is a range.

    An axis the study does not search has the one value of the base run.
    """
    axes: dict[str, list[float]] = {}
    for name in CELL:
        axis = getattr(config.search, name)
        if axis is None:
            axes[name] = [getattr(config.train, name)]
        elif isinstance(axis, list):
            axes[name] = sorted(axis)
        else:
            return None
    return axes


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
        A frame indexed by ``(batch_size, weight_decay, dropout)`` in numeric order with
        the columns of :data:`GRID_COLUMNS`; ``mean`` and ``std`` are NaN where
        ``seeds`` is 0, and ``status`` is one of :data:`CELL_STATUSES`.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    counted = runs[runs["counted"]]
    stats = counted.groupby(CELL)[metric].agg(
        mean="mean", std=lambda values: values.std(ddof=0), seeds="count"
    )
    statuses: dict[tuple[Any, ...], list[str]] = {}
    if trials is not None:
        known = trials[~trials["surplus"] & (trials["cell"] != "")]
        for row in known.itertuples(index=False):
            key = (int(row.batch_size), float(row.weight_decay), float(row.dropout))
            statuses.setdefault(key, []).append(_trial_status(row.state, row.fail_reason))
    else:
        for (_, state), group in runs.groupby(["number", "state"]):
            first = group.iloc[0]
            key = (int(first["batch_size"]), float(first["weight_decay"]), float(first["dropout"]))
            reason = "diverged" if group["diverged"].any() else ""
            statuses.setdefault(key, []).append(_trial_status(str(state), reason))
    keys = set(stats.index) | set(statuses)
    if axes is not None:
        keys |= set(itertools.product(*(axes[name] for name in CELL)))
    index = pd.MultiIndex.from_tuples(sorted(keys), names=CELL)
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
    for name in CELL:
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
    for name in CELL:
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


METRIC_WORDS = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation loss",
    "gap": "generalization gap (validation loss minus training loss)",
}
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
    effects: list[Effect] | None = None,
    higher_is_better: bool = True,
    metric: str = "val_accuracy",
    unit: str = "cell",
) -> Verdict:
    """The verdict on a :func:`balance_grid`, in numbers and in plain sentences.

    The best and runner-up cells are compared by their difference against their
    seed standard deviations: a difference no larger than the larger std is within
    seed noise. ``effects`` default to :func:`regularizer_effects` of the grid
    (pass those of a binned grid for a Bayesian study). ``unit`` names a grid row in
    the sentences: ``cell``, or ``trial`` where each row is one trial's setting.
    """
    words = METRIC_WORDS.get(metric, metric)
    effects = (
        regularizer_effects(grid, higher_is_better=higher_is_better) if effects is None else effects
    )
    data = grid[grid["seeds"] > 0].sort_values(
        "mean", ascending=not higher_is_better, kind="stable"
    )
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
        sentences.append(f"{tied} {unit}s tie at this mean; the first in numeric order is named.")
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
            "weight_decay": math.nan,
            "dropout": math.nan,
            "cells": len(cells),
            "cell_min": math.nan,
            "cell_max": math.nan,
        }
        if len(cells):
            key = cells["mean"].idxmax()
            row.update(
                best_mean=cells.loc[key, "mean"],
                best_std=cells.loc[key, "std"],
                weight_decay=key[1],
                dropout=key[2],
                cell_min=cells["mean"].min(),
                cell_max=cells["mean"].max(),
            )
        max_lr = max_lrs.get(size, math.nan)
        row.update(max_lr=max_lr, min_lr=max_lr / div_factor)
        rows.append(row)
    return pd.DataFrame(rows).set_index("batch_size")
