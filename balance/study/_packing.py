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

from balance import record
from balance.config import PackSize, trial_config
from balance.data import Dataset
from balance.loop import EpochMetrics
from balance.pack_probe import probe_pack_size
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


def resolve_pack(pack: PackSize, objective: Objective) -> int:
    """The pack size a worker uses: ``pack``, or for ``"auto"`` the probe's choice
    (:func:`balance.pack_probe.probe_pack_size`, logged in one line) for the grid's
    first cell at the study's smallest batch size."""
    if pack != "auto":
        return pack
    config = objective.config
    cells = config.search.grid_cells()
    smallest = min(config.batch_sizes)
    cell = next((c for c in cells if c.get("batch_size", smallest) == smallest), cells[0])
    member = trial_config(objective.base, cell, objective.max_lrs)
    limit = max(1, len(cells) // len(config.batch_sizes))
    if objective.model is not None or not isinstance(objective.data, Dataset):
        why = "a model factory object" if objective.model is not None else "streamed data"
        _log.warning(f"pack auto: one at a time ({why} cannot pack)")
        return 1
    probe = probe_pack_size(member, objective.data, seeds=config.seeds, limit=limit)
    _log.warning(probe.line())
    return probe.pack


def _shared(plan: TrialPlan) -> dict[str, Any]:
    """What the members of one pack share: all but weight decay, dropout, seed, max LR."""
    return plan.config.model_dump(exclude=set(MEMBER_FIELDS))


class PackedWorker:
    """Claims, trains and records packs of queued grid trials for one worker.

    Trials are claimed with ``study.ask()`` (each pops one queued trial and marks it
    running, exactly once across workers, as ``optimize`` does) until ``pack`` are
    claimed, the queue is empty, or a claimed trial's shared settings (its batch size)
    differ from the pack's: that one starts the next pack. Cells of other LR
    multipliers pack together, each member on its own schedule. Every
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
        judge = _PackJudge(self, plans)
        with stop_allowed():
            results = iter(train_packed(members, data=self.objective.data, mask=judge))
        for plan in plans:
            trial, runs = plan.trial, list[SeedRun]()
            outcomes = [(seed, next(results)) for seed in plan.seeds]
            if trial.number not in self.open:  # pruned mid-pack, already told
                continue
            try:
                for seed, result in outcomes:
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


class _PackJudge:
    """The pack's ``mask``: after every epoch, report each trial's seeds and prune.

    Member ``i`` is seed ``owners[i][1]`` (its index) of ``plans[owners[i][0]]``. Each
    seed's validation accuracy is reported at ``seed_index * epochs + epoch``, as the
    objective reports it; the pruner then judges the trial at its last seed's point
    (its seeds train side by side here, one after the other alone). A pruned trial
    keeps its seeds' epochs so far, is told pruned at once and leaves the pack. A
    member that diverged ends its trial as a solo run would: the seeds after it stop
    (alone they would never have started), the ones before it finish.
    """

    def __init__(self, worker: PackedWorker, plans: list[TrialPlan]) -> None:
        self.worker = worker
        self.plans = plans
        self.owners = [
            (p, index) for p, plan in enumerate(plans) for index in range(len(plan.seeds))
        ]
        self.histories: list[list[EpochMetrics]] = [[] for _ in self.owners]
        self.alive = set(range(len(self.owners)))
        self.failing: set[int] = set()  # plans with a diverged member: no more pruning
        self.epochs = worker.objective.base.epochs

    def __call__(self, metrics: dict[int, EpochMetrics]) -> set[int]:
        with stop_deferred():
            for i in sorted(self.alive - metrics.keys()):  # diverged this epoch
                p, index = self.owners[i]
                self.failing.add(p)
                self.alive -= {
                    j for j, (q, later) in enumerate(self.owners) if q == p and later > index
                }
            self.alive &= metrics.keys()
            for i in sorted(self.alive):
                self.histories[i].append(metrics[i])
            for p, plan in enumerate(self.plans):
                members = [i for i in sorted(self.alive) if self.owners[i][0] == p]
                if members and p not in self.failing and self._prune(plan, members, metrics):
                    self.alive -= set(members)
        return set(self.alive)

    def _prune(self, plan: TrialPlan, members: list[int], metrics: dict[int, EpochMetrics]) -> bool:
        trial = plan.trial
        for i in members:
            trial.report(
                metrics[i].val_accuracy, self.owners[i][1] * self.epochs + metrics[i].epoch
            )
        if not trial.should_prune():
            return False
        runs = [
            SeedRun.from_history(seed, self.histories[i], None)
            for i, seed in zip(members, plan.seeds, strict=True)
        ]
        record.save_runs(trial, runs)
        self.worker._tell(trial, state=TrialState.PRUNED)
        epoch = metrics[members[0]].epoch
        _trial_log.info(f"Trial {trial.number} pruned. pruned at epoch {epoch} of its packed seeds")
        return True
