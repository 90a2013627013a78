"""Optuna studies: stage 1 fixes the max LR, stage 2 sweeps the regularizers under 1cycle."""

from balance.study._evaluation import chosen_setting, evaluate_on_test
from balance.study._learning_rate import fit_max_lrs, fix_max_lrs, scale_lr
from balance.study._objective import Objective, TrainingDiverged
from balance.study._queue import (
    Progress,
    enqueue_missing_cells,
    fail_dead_workers,
    progress_of,
    requeue_interrupted,
)
from balance.study._racing import queue_race_round, race
from balance.study._stopping import request_stop, stop_allowed, stop_deferred
from balance.study._study import check_signature, create_or_resume, make_pruner, make_sampler
from balance.study._workers import (
    ProgressCallback,
    WorkerDied,
    load_study_data,
    run_one_trial,
    run_worker,
    run_workers,
    worker_plan,
)

__all__ = [
    "Objective",
    "Progress",
    "ProgressCallback",
    "TrainingDiverged",
    "WorkerDied",
    "check_signature",
    "chosen_setting",
    "create_or_resume",
    "enqueue_missing_cells",
    "evaluate_on_test",
    "fail_dead_workers",
    "fit_max_lrs",
    "fix_max_lrs",
    "load_study_data",
    "make_pruner",
    "make_sampler",
    "progress_of",
    "queue_race_round",
    "race",
    "request_stop",
    "requeue_interrupted",
    "run_one_trial",
    "run_worker",
    "run_workers",
    "scale_lr",
    "stop_allowed",
    "stop_deferred",
    "worker_plan",
]
