"""Packed workers (``pack = K``): claim up to K queued grid trials and train their seeds
as one model (:func:`balance.packed.train_packed`), then record each trial as the
objective would."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from balance.packed import MEMBER_FIELDS, pack_reason, train_packed
from balance.runs import SeedRun
from balance.storage import Heartbeats
from balance.study._objective import (
    SURPLUS_MESSAGE,
    Objective,
    TrainingDiverged,
    TrialPlan,
    finish,
    save_seed,
)
from balance.study._queue import has_work
from balance.study._stopping import stop_allowed, stop_deferred

_log = logging.getLogger("balance.study")
# Optuna's own logger for trial outcomes: its handlers drop a diverged trial's traceback.
_trial_log = logging.getLogger("optuna.study.study")


def _shared(plan: TrialPlan) -> dict[str, Any]:
    """What the members of one pack must share: everything but weight decay, dropout, seed."""
    return plan.config.model_dump(exclude=set(MEMBER_FIELDS))


class PackedWorker:
    """Claims, trains and records packs of queued grid trials for one worker.

    Trials are claimed with ``study.ask()`` (each pops one queued trial and marks it
    running, exactly once across workers, as ``optimize`` does) until ``pack`` are
    claimed, the queue is empty, or a claimed trial's shared settings (batch size,
    LR multiplier) differ from the pack's: that one starts the next pack. Every
    claimed trial ends told: complete, pruned (surplus), failed (diverged), or, when
    the worker is stopped, failed with no reason, so ``requeue_interrupted`` queues
    its cell again.
    """

    def __init__(
        self, study: optuna.Study, storage: BaseStorage, objective: Objective, pack: int
    ) -> None:
        self.study = study
        self.objective = objective
        self.pack = pack
        self.heartbeats = Heartbeats(storage, study.study_name)
        self.carry: TrialPlan | None = None
        self.open: dict[int, optuna.Trial] = {}  # claimed, not yet told
        self.warned = False

    def has_work(self) -> bool:
        """Whether a carried trial waits or the queue holds one."""
        return self.carry is not None or has_work(self.study, self.objective.config)

    def close(self) -> None:
        """Stop the heartbeats."""
        self.heartbeats.close()

    def run_pack(self) -> int:
        """Claim, train and record one pack; return how many trials it finished."""
        try:
            with stop_deferred():
                plans, told = self._claim()
                if plans:
                    told += self._train(plans)
                return told
        except BaseException:
            # Stopped (or broken) mid-pack: fail every trial still open, as optimize()
            # fails its trial; a stop's caller queues those cells again.
            with stop_deferred():
                for trial in list(self.open.values()):
                    self._tell(trial, state=TrialState.FAIL)
                self.carry = None
            raise

    def _claim(self) -> tuple[list[TrialPlan], int]:
        plans: list[TrialPlan] = []
        told = 0
        if self.carry is not None:
            plans.append(self.carry)
            self.carry = None
        while len(plans) < self.pack and has_work(self.study, self.objective.config):
            with warnings.catch_warnings():  # the heartbeat is beaten here (Heartbeats)
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                trial = self.study.ask()
            self.open[trial.number] = trial
            self.heartbeats.add(trial.number)
            plan = self.objective.plan(trial)
            if plan is None:  # another worker took the last queued cell
                self._tell(trial, state=TrialState.PRUNED)
                _trial_log.info(f"Trial {trial.number} pruned. {SURPLUS_MESSAGE}")
                told += 1
                continue
            if plans and _shared(plan) != _shared(plans[0]):
                self.carry = plan  # the next pack starts with it
                break
            plans.append(plan)
        return plans, told

    def _train(self, plans: list[TrialPlan]) -> int:
        members = [plan.member(seed) for plan in plans for seed in plan.seeds]
        reason = pack_reason(members, data=self.objective.data)
        if self.objective.model is not None:
            reason = "model: a model factory object; only built-in models pack"
        if reason is not None:
            if not self.warned:
                _log.warning(f"pack: training one trial at a time: {reason}")
                self.warned = True
            for plan in plans:
                self._run_single(plan.trial)
            return len(plans)
        with stop_allowed():
            results = iter(train_packed(members, data=self.objective.data))
        epochs = self.objective.base.epochs
        for plan in plans:
            trial, runs = plan.trial, list[SeedRun]()
            outcomes = [(seed, next(results)) for seed in plan.seeds]
            try:
                for index, (seed, result) in enumerate(outcomes):
                    for metrics in result.epochs:
                        trial.report(metrics.val_accuracy, index * epochs + metrics.epoch)
                    save_seed(trial, runs, seed, list(result.epochs), result)
            except TrainingDiverged as error:
                self._failed(trial, error)
                continue
            self._tell(trial, values=finish(trial, runs))
        return len(plans)

    def _run_single(self, trial: optuna.Trial) -> None:
        """Train a claimed trial through the objective, recorded as ``optimize`` records it."""
        try:
            value = self.objective(trial)
        except optuna.TrialPruned as error:
            self._tell(trial, state=TrialState.PRUNED)
            _trial_log.info(f"Trial {trial.number} pruned. {error}")
            return
        except TrainingDiverged as error:
            self._failed(trial, error)
            return
        self._tell(trial, values=value)

    def _failed(self, trial: optuna.Trial, error: TrainingDiverged) -> None:
        self._tell(trial, state=TrialState.FAIL)
        _trial_log.warning(
            f"Trial {trial.number} failed with parameters: {trial.params} because of the "
            f"following error: {error!r}."
        )

    def _tell(
        self, trial: optuna.Trial, *, values: float | None = None, state: TrialState | None = None
    ) -> None:
        self.study.tell(trial, values, state=state)
        self.open.pop(trial.number, None)
        self.heartbeats.remove(trial.number)
