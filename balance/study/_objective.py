"""The Optuna objective: one trial trains ``seeds`` runs of one regularizer setting."""

from __future__ import annotations

import logging
import os
import socket
import statistics
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from balance import record
from balance.cells import cell_key
from balance.config import (
    SEARCHED,
    FloatRange,
    SearchSpace,
    StudyConfig,
    TrainConfig,
    base_setting,
    trial_config,
)
from balance.loop import EpochMetrics
from balance.models import ModelFactory
from balance.objects import TrainingData
from balance.optim import build_optimizer
from balance.runs import RunDivergence, SeedRun
from balance.study._stopping import stop_allowed, stop_deferred
from balance.train import TrainResult, train


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
    # Optuna's modules log through the handlers of its library logger ("optuna"), which
    # does not propagate: a filter on those handlers sees every failed-trial message.
    # tests/test_study.py checks a real sweep's stderr for the one-line message.
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(item, _DivergenceWithoutTraceback) for item in handler.filters):
            handler.addFilter(_DivergenceWithoutTraceback())


def worker_identity() -> dict[str, Any]:
    """Host and process of this worker, kept on each trial to find dead workers' trials."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def suggest(trial: optuna.Trial, space: SearchSpace, base: TrainConfig) -> dict[str, Any]:
    """The trial's value of every axis of :data:`SEARCHED` (unsearched ones from base)."""
    params: dict[str, Any] = {}
    unsearched = base_setting(base)
    for name in SEARCHED:
        axis = getattr(space, name)
        if axis is None:
            params[name] = unsearched[name]
        elif isinstance(axis, FloatRange):
            params[name] = trial.suggest_float(name, axis.low, axis.high, log=axis.log)
        else:
            params[name] = trial.suggest_categorical(name, axis)
    return params


def fresh_seeds(first: int, count: int, taken: set[int]) -> list[int]:
    """``count`` seeds from ``first`` on, skipping those in ``taken``."""
    seeds: list[int] = []
    seed = first
    while len(seeds) < count:
        if seed not in taken:
            seeds.append(seed)
        seed += 1
    return seeds


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
        data: TrainingData,
        max_lrs: dict[int, float],
        *,
        threads: int | None = None,
        device: str | None = None,
        model: ModelFactory | None = None,
    ) -> None:
        _quiet_divergence_tracebacks()
        # A process imports torch._dynamo (about 2 s here) when it builds its first
        # optimizer; building one now keeps that out of the first trial's duration.
        build_optimizer(nn.Linear(1, 1), config.train, 1e-3)
        self.config = config
        self.data = data
        self.model = model  # a factory in place of config.train.model, or None
        self.max_lrs = max_lrs
        self.base = config.train.model_copy(
            update={
                "threads": config.train.threads if threads is None else threads,
                "device": device or config.train.device,  # "" as None: not given
            }
        )

    def plan(self, trial: optuna.Trial) -> TrialPlan | None:
        """Claim a trial and record its cell; ``None`` for a surplus grid trial.

        A surplus trial (a grid trial Optuna made up because the queue ran dry) is
        marked as such and trains nothing: the caller prunes it.
        """
        record.claim_trial(trial, worker_identity())
        if self.config.sampler == "grid" and record.queued_cell(trial) is None:
            # Only queued cells (enqueued with their key) are trained: a trial Optuna
            # created because the queue ran dry under a racing worker would repeat a
            # cell, so it stops at once.
            record.mark_surplus(trial)
            return None
        params = suggest(trial, self.config.search, self.base)
        run_config = trial_config(self.base, params, self.max_lrs)
        max_lr = float(run_config.max_lr or 0.0)
        searched = self.config.search.axes()
        key = cell_key({name: params[name] for name in searched})
        count = record.queued_seed_count(trial) or self.config.seeds  # a racing round's own
        seeds = fresh_seeds(self.base.seed, count, record.taken_seeds(trial, key))
        record.set_cell(trial, key, max_lr, seeds)
        return TrialPlan(trial, run_config, seeds)

    def __call__(self, trial: optuna.Trial) -> float:
        """Train every seed of the trial's setting; return the mean validation accuracy."""
        plan = self.plan(trial)
        if plan is None:
            raise optuna.TrialPruned(SURPLUS_MESSAGE)
        epochs = self.base.epochs
        runs: list[SeedRun] = []
        for index, seed in enumerate(plan.seeds):
            history: list[EpochMetrics] = []

            def report(
                metrics: EpochMetrics,
                index: int = index,
                history: list[EpochMetrics] = history,
                seed: int = seed,
            ) -> None:
                history.append(metrics)
                # Training takes a stop at once, but never in the middle of a storage
                # write: a journal line cut short, or a lock held by an interrupted
                # write, kept the stopped worker from queueing its cell again.
                with stop_deferred():
                    trial.report(metrics.val_accuracy, index * epochs + metrics.epoch)
                    prune = trial.should_prune()
                    if prune:
                        record.save_runs(trial, [*runs, SeedRun.from_history(seed, history, None)])
                if prune:
                    raise optuna.TrialPruned(f"pruned at seed {seed}, epoch {metrics.epoch}")

            with stop_allowed():
                result = train(plan.member(seed), data=self.data, model=self.model, callback=report)
            save_seed(trial, runs, seed, history, result)
        return finish(trial, runs)


SURPLUS_MESSAGE = "grid queue empty: no cell to claim"


@dataclass(frozen=True)
class TrialPlan:
    """A claimed trial's run configuration and the seeds it trains."""

    trial: optuna.Trial
    config: TrainConfig
    seeds: list[int]

    def member(self, seed: int) -> TrainConfig:
        """The training run of one of its seeds."""
        return self.config.model_copy(update={"seed": seed})


def save_seed(
    trial: optuna.Trial,
    runs: list[SeedRun],
    seed: int,
    history: list[EpochMetrics],
    result: TrainResult,
) -> None:
    """Record a seed's finished run (appended to ``runs``); a diverged one fails the trial.

    Raises:
        TrainingDiverged: the seed's loss became non-finite (recorded first).
    """
    runs.append(SeedRun.from_history(seed, history, result))
    record.save_runs(trial, runs)
    if result.diverged is not None:
        divergence = RunDivergence(result.diverged.step, result.diverged.lr)
        record.mark_diverged(trial, seed, divergence)
        raise TrainingDiverged(
            f"seed {seed} diverged at step {divergence.step} (lr {divergence.lr:.3g})"
        )


def finish(trial: optuna.Trial, runs: list[SeedRun]) -> float:
    """Record the means over a trial's seeds; return its value, the mean validation accuracy."""
    record.save_means(trial, runs)
    return statistics.fmean(run.val_accuracy for run in runs if run.val_accuracy is not None)
