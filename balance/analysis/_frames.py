"""A study record as pandas frames: one row per trial, one row per seed run; the grid audit.

Seed aggregation is explicit: :func:`runs_frame` has one row per seed run and
:func:`balance.analysis.balance_grid` averages them per cell, so a report never
shows the latest trial of a cell where it means the mean over seeds.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from balance.cells import cell_key, repeated_runs
from balance.config import SEARCHED, StudyConfig, base_setting
from balance.record import StudyRecord, TrialRecord
from balance.runs import finite_or_nan

FRAME_COLUMNS = [
    "number",
    "state",
    *SEARCHED,
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
    "race_round",
]

GRID_INDEX = ["batch_size", "lr_multiplier", "weight_decay", "dropout"]
"""The index of a balance grid: one panel per batch size and LR multiplier, weight decay x
dropout inside."""

METRICS = ("val_accuracy", "val_loss", "gap")
"""Metrics a balance grid can aggregate; only ``val_accuracy`` is better when higher."""

METRIC_LABELS = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation loss",
    "gap": "gap (val loss - train loss)",
}
"""How the report, its figures and the verdict name each metric."""

RUN_COLUMNS = [
    "number",
    "state",
    *GRID_INDEX,
    "seed",
    "val_accuracy",
    "val_loss",
    "train_loss",
    "gap",
    "steps",
    "diverged",
    "counted",
]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _setting(trial: TrialRecord, config: StudyConfig) -> dict[str, Any]:
    base = base_setting(config.train)
    return {name: trial.params.get(name, base[name]) for name in SEARCHED}


def trial_row(trial: TrialRecord, config: StudyConfig) -> dict[str, Any]:
    """One trial as a flat row; metrics are means over the seeds it finished."""
    done = [run for run in trial.runs if run.finished]
    val_acc = [float(run.val_accuracy) for run in done if run.val_accuracy is not None]
    diverged = trial.diverged or {}
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state,
        **_setting(trial, config),
        "max_lr": finite_or_nan(trial.max_lr),
        "val_accuracy": trial.value if trial.value is not None else _mean(val_acc),
        "val_accuracy_std": statistics.pstdev(val_acc)
        if len(val_acc) > 1
        else (0.0 if val_acc else math.nan),
        "val_loss": _mean([finite_or_nan(run.val_loss) for run in done]),
        "train_loss": _mean([finite_or_nan(run.train_loss) for run in done]),
        "seeds_done": len(done),
        "steps": sum(run.steps for run in trial.runs),
        "duration_s": finite_or_nan(trial.duration_s),
        "diverged_step": diverged.get("step", math.nan),
        "diverged_lr": diverged.get("lr", math.nan),
        "fail_reason": trial.fail_reason,
        "surplus": trial.surplus,
        "cell": trial.cell,
        "race_round": math.nan if trial.race_round is None else trial.race_round,
    }
    row["gap"] = row["val_loss"] - row["train_loss"]
    if trial.state == "fail" and not row["fail_reason"]:
        row["fail_reason"] = "diverged" if diverged else "interrupted"
    return row


def trials_frame(record: StudyRecord) -> pd.DataFrame:
    """All trials of a study, one row each, with the columns of :data:`FRAME_COLUMNS`."""
    rows = [trial_row(trial, record.config) for trial in record.trials]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def runs_frame(record: StudyRecord) -> pd.DataFrame:
    """One row per seed run the trials recorded (surplus trials, which train nothing, left out).

    ``gap`` is ``val_loss - train_loss`` of that run; ``train_loss`` is the mean over the
    last epoch's steps with dropout on. ``counted`` marks the runs a balance grid averages:
    finished runs of completed trials, as :attr:`balance.record.TrialRecord.counted_runs`,
    each distinct (cell, seed) once (:func:`balance.cells.repeated_runs`).
    """
    rows = []
    repeats = repeated_runs(record.trials)
    for trial in record.trials:
        if trial.surplus:
            continue
        setting = _setting(trial, record.config)
        for run in trial.runs:
            val_loss, train_loss = finite_or_nan(run.val_loss), finite_or_nan(run.train_loss)
            rows.append(
                {
                    "number": trial.number,
                    "state": trial.state,
                    **{name: setting[name] for name in GRID_INDEX},
                    "seed": run.seed,
                    "val_accuracy": finite_or_nan(run.val_accuracy),
                    "val_loss": val_loss,
                    "train_loss": train_loss,
                    "gap": val_loss - train_loss,
                    "steps": run.steps,
                    "diverged": run.diverged is not None,
                    "counted": trial.state == "complete"
                    and run.finished
                    and (trial.number, run.seed) not in repeats,
                }
            )
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return frame.astype(
        {
            "number": int,
            "batch_size": int,
            "weight_decay": float,
            "dropout": float,
            "lr_multiplier": float,
            "seed": int,
            "steps": int,
            "diverged": bool,
            "counted": bool,
            **dict.fromkeys((*METRICS, "train_loss"), float),
        }
    )


def audit(frame: pd.DataFrame, config: StudyConfig) -> dict[str, Any]:
    """Grid coverage: cells missing, trained more than once, or only failed.

    A cell is trained by a completed, pruned or diverged trial; surplus trials
    (stopped before training because the queue was empty) train nothing. A racing
    round's trials give a cell more seeds on purpose: they are counted apart
    (``raced_trials``, ``race_rounds``), not as duplicates.
    """
    trained = frame[
        ~frame["surplus"]
        & (frame["state"].isin(["complete", "pruned"]) | (frame["fail_reason"] == "diverged"))
    ]
    raced = trained["race_round"].notna()
    counts = trained.loc[~raced, "cell"].value_counts()
    result: dict[str, Any] = {
        "trained_trials": len(trained),
        "surplus_trials": int(frame["surplus"].sum()),
        "duplicated": sorted(counts[counts > 1].index.tolist()),
        "raced_trials": int(raced.sum()),
        "race_rounds": int(trained["race_round"].max()) if raced.any() else 0,
    }
    if config.sampler == "grid":
        expected = {cell_key(cell) for cell in config.search.grid_cells()}
        failed_cells = set(frame.loc[frame["state"] == "fail", "cell"]) - set(trained["cell"])
        result["cells"] = len(expected)
        result["missing"] = sorted(expected - set(trained["cell"]))
        result["failed_only"] = sorted(failed_cells & expected)
    return result
