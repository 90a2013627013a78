"""Optuna studies: stage 1 fixes the max LR, stage 2 sweeps the regularizers under 1cycle."""

from balance.study._learning_rate import fit_max_lrs, scale_lr
from balance.study._objective import Objective, TrainingDiverged
from balance.study._space import cell_key, grid_cells
from balance.study._stopping import request_stop, stop_allowed, stop_deferred
from balance.study._storage import (
    default_storage_url,
    is_file_storage,
    open_storage,
    storage_url,
)
from balance.study._sweep import (
    Progress,
    SweepResult,
    WorkerDied,
    create_or_resume,
    enqueue_missing_cells,
    evaluate_on_test,
    fail_dead_workers,
    preflight,
    prepare,
    progress_of,
    requeue_interrupted,
    run_one_trial,
    run_worker,
    run_workers,
    sweep,
)

__all__ = [
    "Objective",
    "Progress",
    "SweepResult",
    "TrainingDiverged",
    "WorkerDied",
    "cell_key",
    "create_or_resume",
    "default_storage_url",
    "enqueue_missing_cells",
    "evaluate_on_test",
    "fail_dead_workers",
    "fit_max_lrs",
    "grid_cells",
    "is_file_storage",
    "open_storage",
    "preflight",
    "prepare",
    "progress_of",
    "request_stop",
    "requeue_interrupted",
    "run_one_trial",
    "run_worker",
    "run_workers",
    "scale_lr",
    "stop_allowed",
    "stop_deferred",
    "storage_url",
    "sweep",
]
