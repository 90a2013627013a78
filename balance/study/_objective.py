"""The Optuna objective: one trial trains ``seeds`` runs of one regularizer setting."""

from __future__ import annotations

import logging
import os
import socket
import statistics
from typing import Any

import optuna
from torch import nn

from balance.config import StudyConfig
from balance.data import Dataset
from balance.optim import build_optimizer
from balance.study._space import cell_key, suggest
from balance.study._stopping import stop_allowed
from balance.train import EpochMetrics, TrainResult, train

METRIC = "val_accuracy"


class TrainingDiverged(Exception):
    """A seed's loss became non-finite; the trial is recorded as failed with the reason."""


class _DivergenceWithoutTraceback(logging.Filter):
    # Optuna logs every failed trial with its traceback. A diverged run is an outcome of
    # the search, not a bug, and the message already names the seed, step and LR.
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrainingDiverged):
            record.exc_info = None
        return True


def _quiet_divergence_tracebacks() -> None:
    logger = logging.getLogger("optuna.study._optimize")  # where Optuna logs failed trials
    if not any(isinstance(item, _DivergenceWithoutTraceback) for item in logger.filters):
        logger.addFilter(_DivergenceWithoutTraceback())


def worker_identity() -> dict[str, Any]:
    """Host and process of this worker, kept on each trial to find dead workers' trials."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _curve(history: list[EpochMetrics]) -> dict[str, list[float]]:
    return {
        "epoch": [m.epoch for m in history],
        "train_loss": [m.train_loss for m in history],
        "val_loss": [m.val_loss for m in history],
        "val_accuracy": [m.val_accuracy for m in history],
    }


def _run_record(
    seed: int, history: list[EpochMetrics], result: TrainResult | None
) -> dict[str, Any]:
    last = history[-1] if history else None
    record: dict[str, Any] = {
        "seed": seed,
        "val_accuracy": last.val_accuracy if last else None,
        "val_loss": last.val_loss if last else None,
        "train_loss": last.train_loss if last else None,
        "steps": last.step if last else 0,
        "curve": _curve(history),
        "diverged": None,
    }
    if result is not None:
        record["steps"] = result.steps
        record["train_time"] = result.train_time
        if result.diverged is not None:
            record["diverged"] = {"step": result.diverged.step, "lr": result.diverged.lr}
    return record


class Objective:
    """Callable objective for :meth:`optuna.Study.optimize`.

    Reports validation accuracy after every epoch at step ``seed_index * epochs +
    epoch``, so pruners compare trials at the same point of the same seed. Every
    seed's record is saved to the trial as soon as it ends: a crash loses at
    most the seed in flight.
    """

    def __init__(
        self,
        config: StudyConfig,
        data: Dataset,
        max_lrs: dict[int, float],
        *,
        threads: int | None = None,
        device: str | None = None,
    ) -> None:
        _quiet_divergence_tracebacks()
        # A process imports torch._dynamo (about 2 s here) when it builds its first
        # optimizer; building one now keeps that out of the first trial's duration.
        build_optimizer(nn.Linear(1, 1), config.train, 1e-3)
        self.config = config
        self.data = data
        self.max_lrs = max_lrs
        self.base = config.train.model_copy(
            update={
                "threads": threads or config.train.threads,
                "device": device or config.train.device,
            }
        )

    def __call__(self, trial: optuna.Trial) -> float:
        """Train every seed of the trial's setting; return the mean validation accuracy."""
        trial.set_user_attr("worker", worker_identity())
        trial.set_user_attr("runs", [])  # a retried trial inherits its failed copy's attrs
        if self.config.sampler == "grid" and "cell" not in trial.user_attrs:
            # Only queued cells (enqueued with a "cell" attr) are trained: a trial Optuna
            # created because the queue ran dry under a racing worker would repeat a
            # cell, so it stops at once.
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("grid queue empty: no cell to claim")
        params = suggest(trial, self.config.search, self.base)
        max_lr = self.max_lrs[params["batch_size"]]
        searched = self.config.search.axes()
        trial.set_user_attr("cell", cell_key({name: params[name] for name in searched}))
        trial.set_user_attr("max_lr", max_lr)
        epochs = self.base.epochs
        runs: list[dict[str, Any]] = []
        for index in range(self.config.seeds):
            seed = self.base.seed + index
            history: list[EpochMetrics] = []

            def report(
                metrics: EpochMetrics,
                index: int = index,
                history: list[EpochMetrics] = history,
                seed: int = seed,
            ) -> None:
                history.append(metrics)
                trial.report(metrics.val_accuracy, index * epochs + metrics.epoch)
                if trial.should_prune():
                    trial.set_user_attr("runs", [*runs, _run_record(seed, history, None)])
                    raise optuna.TrialPruned(f"pruned at seed {seed}, epoch {metrics.epoch}")

            config = self.base.model_copy(update={**params, "max_lr": max_lr, "seed": seed})
            with stop_allowed():
                result = train(config, data=self.data, callback=report)
            runs.append(_run_record(seed, history, result))
            trial.set_user_attr("runs", runs)
            if result.diverged is not None:
                reason = {"seed": seed, "step": result.diverged.step, "lr": result.diverged.lr}
                trial.set_user_attr("diverged", reason)
                raise TrainingDiverged(
                    f"seed {seed} diverged at step {reason['step']} (lr {reason['lr']:.3g})"
                )
        values = [run["val_accuracy"] for run in runs]
        trial.set_user_attr("val_accuracy_std", statistics.pstdev(values))
        trial.set_user_attr("val_loss", statistics.fmean(run["val_loss"] for run in runs))
        trial.set_user_attr("train_loss", statistics.fmean(run["train_loss"] for run in runs))
        return statistics.fmean(values)
