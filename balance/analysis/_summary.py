"""``summary.json``: the study's answer in numbers, from its record and trials frame."""

from __future__ import annotations

import platform
from typing import Any

import pandas as pd

from balance.analysis._frames import audit
from balance.analysis._intervals import cell_interval
from balance.cells import CellResult, distinct_runs
from balance.record import StudyRecord


def environment(device: str) -> dict[str, Any]:
    """Python, torch and Optuna versions, torch threads, machine and device of this process."""
    import optuna
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "device": device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
    }


def summarize(
    record: StudyRecord, frame: pd.DataFrame, *, wall_time: float | None = None
) -> dict[str, Any]:
    """The JSON summary: max LR per batch size, best cell, validation and test figures.

    ``frame`` is :func:`balance.analysis.trials_frame` of ``record``. The best cell is
    :attr:`balance.record.StudyRecord.best`: its first trial, setting, and mean and std
    of validation accuracy over seeds.
    """
    config = record.config
    states = frame["state"].value_counts().to_dict()
    best = record.best
    max_lrs = record.stage_one.max_lrs
    return {
        "study": config.name,
        "storage": record.storage,
        "sampler": config.sampler,
        "pruner": config.pruner,
        "seeds": config.seeds,
        "epochs_per_trial": config.train.epochs,
        "policy": config.train.policy,
        "max_lr": {str(size): lr for size, lr in max_lrs.items()},
        "min_lr": {str(size): lr / config.train.div_factor for size, lr in max_lrs.items()},
        "trials": {str(k): int(v) for k, v in states.items()},
        "diverged": int((frame["fail_reason"] == "diverged").sum()),
        "steps_total": int(frame["steps"].sum()),
        "best": None
        if best is None
        else {
            "trial": best.trials[0],
            "params": best.params,
            "val_accuracy": best.mean,
            "val_accuracy_std": best.std,
            "val_accuracy_interval": _interval(record, best),
        },
        "test": {} if record.final is None else record.final.to_attrs(),
        "audit": audit(frame, config),
        "wall_time_s": wall_time,
        "environment": environment(config.train.device),
    }


def _interval(record: StudyRecord, cell: CellResult) -> dict[str, float] | None:
    """The cell's two-way bootstrap interval; None when a run kept no per-example data."""
    rows = [run.correct() for run in distinct_runs(record.trials, cell.key)]
    if not rows or any(row is None for row in rows):
        return None
    interval = cell_interval([row for row in rows if row is not None])
    return {"low": interval.low, "high": interval.high, "level": interval.level}
