"""From stored trials to a pandas frame, a coverage audit and a JSON summary."""

from __future__ import annotations

import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from balance.config import SEARCHED, StudyConfig

FRAME_COLUMNS = [
    "number", "state", "weight_decay", "dropout", "batch_size", "max_lr",
    "val_accuracy", "val_accuracy_std", "val_loss", "train_loss", "gap",
    "seeds_done", "steps", "duration_s", "diverged_step", "diverged_lr", "fail_reason",
    "surplus", "cell",
]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def trial_row(trial: optuna.trial.FrozenTrial, config: StudyConfig) -> dict[str, Any]:
    """One trial as a flat row; metrics are means over the seeds it finished."""
    params = dict(trial.system_attrs.get("fixed_params", {}))
    params.update(trial.params)
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
        "val_accuracy_std": statistics.pstdev(val_acc) if len(val_acc) > 1 else
        (0.0 if val_acc else math.nan),
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

    trained = frame[~frame["surplus"] & (
        frame["state"].isin(["complete", "pruned"]) | (frame["fail_reason"] == "diverged")
    )]
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


def summarize(study: optuna.Study, config: StudyConfig, frame: pd.DataFrame, *,
              url: str, wall_time: float | None = None) -> dict[str, Any]:
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
        "best": None if best is None else {
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
        },
    }


def write_results(study: optuna.Study, config: StudyConfig, out_dir: Path, *, url: str,
                  wall_time: float | None = None) -> dict[str, Any]:
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
