"""``summary.json``: the study's answer in numbers, from its record and trials frame."""

from __future__ import annotations

import platform
from typing import Any

import pandas as pd

from balance.analysis._frames import audit
from balance.analysis._noise import NoiseAnalysis, analyse_noise, empty_summary
from balance.analysis._tradeoff import batch_size_study, lr_tradeoff
from balance.range_test import fit_batch_scaling
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
    record: StudyRecord,
    frame: pd.DataFrame,
    *,
    wall_time: float | None = None,
    noise: NoiseAnalysis | None = None,
) -> dict[str, Any]:
    """The JSON summary: max LR per batch size, best cell, validation and test figures.

    ``frame`` is :func:`balance.analysis.trials_frame` of ``record``. The best cell is
    :attr:`balance.record.StudyRecord.best`: its first trial, setting, and mean and std
    of validation accuracy over seeds. ``noise`` is :func:`analyse_noise` of ``record``
    (computed here when not given): every cell's interval, the cells indistinguishable
    from the best, the tests of no effect per axis, what separating the top cells would
    take and the test split's paired difference; with it, the LR / weight decay
    trade-off (``lr_tradeoff``) and each batch size's best cell with its cost
    (``batch_sizes``). ``batch_scaling`` fits ``max_lr = c * B**k`` through stage 1's
    range tests.
    """
    noise = analyse_noise(record) if noise is None else noise
    tradeoff = None if noise is None else lr_tradeoff(record, noise)
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
            "val_accuracy_interval": None
            if noise is None
            else {"low": noise.best.low, "high": noise.best.high, "level": noise.level},
        },
        **(empty_summary() if noise is None else noise.to_summary()),
        "lr_tradeoff": None if tradeoff is None else tradeoff.to_summary(),
        "batch_sizes": []
        if noise is None
        else [result._asdict() for result in batch_size_study(record, noise)],
        "batch_scaling": batch_scaling(record),
        "noise_scale": {
            str(size): scale.to_dict() for size, scale in record.stage_one.noise_scales.items()
        },
        "test": {} if record.final is None else record.final.to_attrs(),
        "audit": audit(frame, config),
        "wall_time_s": wall_time,
        "environment": environment(config.train.device),
    }


def batch_scaling(record: StudyRecord) -> dict[str, Any] | None:
    """``max_lr = c * B**k`` fitted through stage 1's own range tests (two or more sizes)."""
    answers = {size: test.max_lr for size, test in record.stage_one.range_tests.items()}
    fit = fit_batch_scaling(answers)
    return None if fit is None else fit.to_dict()
