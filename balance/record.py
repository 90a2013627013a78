"""What a study stores, typed: seed runs, trials, stage 1 and the final test evaluation.

Optuna keeps balance's data as JSON user attributes of the study and its trials.
This module is their one owner: every key is named here, every write goes
through a function here, and :func:`load_record` reads a study once into a
:class:`StudyRecord` that the analysis and the report take as plain data.

The stored forms of one run live in :mod:`balance.runs`; cell keys and the one
definition of the best cell in :mod:`balance.cells`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from balance.cells import CellResult, best_cell, cell_key, cell_results, parse_cell_key
from balance.config import SEARCHED, StudyConfig, base_setting
from balance.gradient_noise import NoiseScale
from balance.range_test import RangeTestResult
from balance.runs import FinalEvaluation, RunDivergence, SeedRun, optional_float
from balance.storage import trial_id

# Study attributes.
_SIGNATURE = "signature"  # what must match for a file to resume the study
_CONFIG = "config"  # the study file's configuration when the study was created
_RANGE_TESTS = "range_tests"  # stage 1: batch size -> RangeTestResult.to_dict()
_MAX_LRS = "max_lr"  # stage 1: batch size -> max LR
_NOISE_SCALES = "noise_scales"  # stage 1: batch size -> NoiseScale.to_dict()
_FINAL = "final"  # the test evaluation of the chosen setting and the baseline

# Trial attributes.
_WORKER = "worker"  # {"host", "pid"} of the process training the trial
_RUNS = "runs"  # one SeedRun.to_attrs() per seed, saved as each seed ends
_CELL = "cell"  # cell_key of the grid cell (queued cells carry it from the start)
_SURPLUS = "surplus"  # a grid trial Optuna created with no queued cell: trains nothing
_MAX_LR = "max_lr"  # the max LR the trial trained with
_SEEDS = "seeds"  # the seeds the trial trains, fixed when it starts
_DIVERGED = "diverged"  # {"seed", "step", "lr"} of the run whose loss became non-finite
_FAIL_REASON = "fail_reason"  # why a trial failed without diverging ("worker died")
_REQUEUED_FROM = "requeued_from"  # the interrupted trial whose cell this queued trial retrains
_RACE_ROUND = "race_round"  # the racing round that queued the trial (absent: the grid's own)
_SEED_COUNT = "seed_count"  # seeds a queued racing trial trains (absent: the study's seeds)
_VAL_ACCURACY_STD = "val_accuracy_std"
_VAL_LOSS = "val_loss"
_TRAIN_LOSS = "train_loss"

STATES = ("complete", "pruned", "running", "waiting", "fail")
"""A trial's state, as every frame, table and count names it (Optuna's, lower case)."""


def state_name(state: TrialState) -> str:
    """The vocabulary of :data:`STATES` for an Optuna trial state."""
    return state.name.lower()


# --------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialRecord:
    """One Optuna trial as balance reads it.

    ``params`` holds every searched value the trial has: suggested ones, or for a
    queued trial that has not run yet, the values of its cell. ``cell`` is empty
    for a trial that never got a setting (a surplus grid trial). ``value`` is
    Optuna's: the objective for a completed trial, the last reported value for a
    pruned one.
    """

    number: int
    state: str
    params: dict[str, Any]
    cell: str
    value: float | None
    max_lr: float | None
    runs: tuple[SeedRun, ...]
    diverged: dict[str, Any] | None
    fail_reason: str
    surplus: bool
    worker: dict[str, Any] | None
    requeued_from: int | None
    started: datetime | None
    completed: datetime | None
    race_round: int | None = None
    seed_count: int | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end (``None`` while unfinished)."""
        if self.started is None or self.completed is None:
            return None
        return (self.completed - self.started).total_seconds()

    @property
    def is_diverged(self) -> bool:
        """A failed trial whose run diverged: an outcome of the search, not an accident."""
        return self.state == "fail" and self.diverged is not None

    @property
    def trains_cell(self) -> bool:
        """Whether the trial measured its cell: completed, pruned or diverged (never surplus)."""
        return not self.surplus and (self.state in ("complete", "pruned") or self.is_diverged)

    @property
    def counted_runs(self) -> tuple[SeedRun, ...]:
        """The runs a cell's mean counts: finished runs of a completed trial.

        A pruned run stopped early, a running trial may still change, and a
        diverged trial has no final figures.
        """
        if self.state != "complete":
            return ()
        return tuple(run for run in self.runs if run.finished)

    @classmethod
    def from_frozen(cls, trial: FrozenTrial) -> TrialRecord:
        """Read an Optuna trial (any state)."""
        attrs = trial.user_attrs
        cell = str(attrs.get(_CELL, ""))
        params = {**parse_cell_key(cell), **trial.params}
        return cls(
            number=trial.number,
            state=state_name(trial.state),
            params={name: params[name] for name in SEARCHED if name in params},
            cell=cell,
            value=trial.value,
            max_lr=optional_float(attrs.get(_MAX_LR)),
            runs=tuple(SeedRun.from_attrs(run) for run in attrs.get(_RUNS, [])),
            diverged=attrs.get(_DIVERGED) or None,
            fail_reason=str(attrs.get(_FAIL_REASON, "")),
            surplus=bool(attrs.get(_SURPLUS, False)),
            worker=attrs.get(_WORKER),
            requeued_from=attrs.get(_REQUEUED_FROM),
            started=trial.datetime_start,
            completed=trial.datetime_complete,
            race_round=attrs.get(_RACE_ROUND),
            seed_count=attrs.get(_SEED_COUNT),
        )


def read_trials(
    study: optuna.Study, states: Iterable[TrialState] | None = None
) -> list[TrialRecord]:
    """The study's trials as records, by number (``states`` limits them)."""
    chosen = None if states is None else tuple(states)
    return [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False, states=chosen)]


# Writes during a trial (the objective's).


def claim_trial(trial: optuna.Trial, worker: dict[str, Any]) -> None:
    """Mark a trial as this worker's and clear runs a retried trial copied from its original."""
    trial.set_user_attr(_WORKER, worker)
    trial.set_user_attr(_RUNS, [])


def queued_cell(trial: optuna.Trial) -> str | None:
    """The cell key a queued trial was enqueued with, ``None`` for a trial Optuna made up."""
    key = trial.user_attrs.get(_CELL)
    return None if key is None else str(key)


def queued_seed_count(trial: optuna.Trial) -> int | None:
    """How many seeds a queued racing trial trains; ``None``: the study's ``seeds``."""
    count = trial.user_attrs.get(_SEED_COUNT)
    return None if count is None else int(count)


def mark_surplus(trial: optuna.Trial) -> None:
    """Mark a grid trial that found no queued cell: it trains nothing."""
    trial.set_user_attr(_SURPLUS, True)


def set_cell(trial: optuna.Trial, key: str, max_lr: float, seeds: Sequence[int]) -> None:
    """Record the trial's cell, the max LR and the seeds it trains with."""
    trial.set_user_attr(_CELL, key)
    trial.set_user_attr(_MAX_LR, max_lr)
    trial.set_user_attr(_SEEDS, list(seeds))


def taken_seeds(trial: optuna.Trial, key: str) -> set[int]:
    """Seeds of cell ``key`` that another completed or running trial has trained or trains.

    A sampler that proposes a finished cell again (TPE over list axes does) must not
    train the same seeds twice: the repeat would count as new evidence. Pruned and
    failed trials count no runs, so their seeds are free again.
    """
    taken: set[int] = set()
    states = (TrialState.COMPLETE, TrialState.RUNNING)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.number == trial.number or other.user_attrs.get(_CELL) != key:
            continue
        attrs = other.user_attrs
        taken.update(int(seed) for seed in attrs.get(_SEEDS, []))
        taken.update(int(run["seed"]) for run in attrs.get(_RUNS, []))
    return taken


def save_runs(trial: optuna.Trial, runs: Sequence[SeedRun]) -> None:
    """Store the trial's seed runs so far (called as each seed ends: a crash loses one)."""
    trial.set_user_attr(_RUNS, [run.to_attrs() for run in runs])


def mark_diverged(trial: optuna.Trial, seed: int, divergence: RunDivergence) -> None:
    """Record which seed diverged, at which step and LR."""
    trial.set_user_attr(_DIVERGED, {"seed": seed, **divergence._asdict()})


def save_means(trial: optuna.Trial, runs: Sequence[SeedRun]) -> None:
    """Store the std of validation accuracy and the mean losses over the trial's seeds."""
    values = [run.val_accuracy for run in runs if run.val_accuracy is not None]
    trial.set_user_attr(_VAL_ACCURACY_STD, statistics.pstdev(values))
    trial.set_user_attr(
        _VAL_LOSS, statistics.fmean(r.val_loss for r in runs if r.val_loss is not None)
    )
    trial.set_user_attr(
        _TRAIN_LOSS, statistics.fmean(r.train_loss for r in runs if r.train_loss is not None)
    )


# Writes from outside a trial (the queue's and recovery's).


def enqueue_cell(
    study: optuna.Study,
    cell: dict[str, Any],
    *,
    requeued_from: int | None = None,
    race_round: int | None = None,
    seed_count: int | None = None,
) -> None:
    """Queue a grid cell for the next free worker, tagged with its key.

    A racing round's trial carries its round and how many more seeds it trains.
    """
    attrs: dict[str, Any] = {_CELL: cell_key(cell)}
    for name, value in (
        (_REQUEUED_FROM, requeued_from),
        (_RACE_ROUND, race_round),
        (_SEED_COUNT, seed_count),
    ):
        if value is not None:
            attrs[name] = value
    study.enqueue_trial(cell, user_attrs=attrs)


def fail_trial(storage: BaseStorage, study: optuna.Study, number: int, reason: str) -> None:
    """Fail a trial another process was running (a dead worker's), with the reason.

    Optuna's public API changes only a trial the caller runs (``study.tell``), so
    this goes through the storage's methods; ``tests/test_study.py`` kills a
    worker mid-trial and checks the trial comes out failed and retrained.
    """
    tid = trial_id(storage, study.study_name, number)
    storage.set_trial_user_attr(tid, _FAIL_REASON, reason)
    storage.set_trial_state_values(tid, state=TrialState.FAIL)


# --------------------------------------------------------------------------- stage 1


@dataclass(frozen=True)
class StageOne:
    """What stage 1 fixed: the max LR per batch size and the range tests behind them.

    ``range_tests`` is empty where no range test ran (a ``train.max_lr`` in the file)
    or holds one test that the other batch sizes were scaled from. ``noise_scales``
    holds the gradient noise scale measured over the first epoch at each batch size's
    max LR (empty for studies stored before balance measured it).
    """

    max_lrs: dict[int, float] = field(default_factory=dict)
    range_tests: dict[int, RangeTestResult] = field(default_factory=dict)
    noise_scales: dict[int, NoiseScale] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether stage 1 has fixed the LRs."""
        return bool(self.max_lrs)

    @classmethod
    def from_study(cls, study: optuna.Study) -> StageOne:
        """Read stage 1 from a study's attributes (empty before it ran)."""
        return cls.from_attrs(study.user_attrs)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StageOne:
        """Read stage 1 from a study's user attributes."""
        tests = attrs.get(_RANGE_TESTS, {})
        scales = attrs.get(_NOISE_SCALES, {})
        return cls(
            max_lrs={int(size): float(lr) for size, lr in attrs.get(_MAX_LRS, {}).items()},
            range_tests={
                int(size): RangeTestResult.from_dict(tests[size]) for size in sorted(tests, key=int)
            },
            noise_scales={
                int(size): NoiseScale.from_dict(scales[size]) for size in sorted(scales, key=int)
            },
        )


def save_stage_one(study: optuna.Study, stage: StageOne) -> None:
    """Store stage 1's range tests and LRs (tests first: the LRs mark stage 1 as done)."""
    tests = {str(size): test.to_dict() for size, test in stage.range_tests.items()}
    study.set_user_attr(_RANGE_TESTS, tests)
    scales = {str(size): scale.to_dict() for size, scale in stage.noise_scales.items()}
    study.set_user_attr(_NOISE_SCALES, scales)
    study.set_user_attr(_MAX_LRS, {str(size): lr for size, lr in stage.max_lrs.items()})


def load_final(study: optuna.Study) -> FinalEvaluation | None:
    """The stored test evaluation (``None`` before it ran)."""
    return FinalEvaluation.from_attrs(study.user_attrs.get(_FINAL))


def save_final(study: optuna.Study, final: FinalEvaluation) -> None:
    """Store the test evaluation."""
    study.set_user_attr(_FINAL, final.to_attrs())


# --------------------------------------------------------------------------- the signature


def stored_signature(study: optuna.Study) -> dict[str, Any] | None:
    """The space signature the study was created with (``None`` for a new study)."""
    return study.user_attrs.get(_SIGNATURE)


def save_signature(study: optuna.Study, config: StudyConfig, signature: dict[str, Any]) -> None:
    """Store the signature and the full configuration of a study being created."""
    study.set_user_attr(_SIGNATURE, signature)
    study.set_user_attr(_CONFIG, config.model_dump(mode="json"))


# --------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class StudyRecord:
    """Everything a study holds, read once: the analysis and the report take only this.

    ``config`` is the study file's configuration; ``storage`` names where the study
    was read from (for the report's header).
    """

    config: StudyConfig
    storage: str
    trials: tuple[TrialRecord, ...]
    stage_one: StageOne
    final: FinalEvaluation | None

    @property
    def name(self) -> str:
        """The study's name."""
        return self.config.name

    @property
    def cells(self) -> list[CellResult]:
        """:func:`cell_results` of the trials."""
        return cell_results(self.trials, base_setting(self.config.train))

    @property
    def best(self) -> CellResult | None:
        """:func:`best_cell` of the trials."""
        return best_cell(self.cells)

    def trial(self, number: int) -> TrialRecord:
        """The trial with that number."""
        return next(trial for trial in self.trials if trial.number == number)

    def span_s(self) -> float | None:
        """Seconds from the first trial's start to the last one's end."""
        starts = [t.started for t in self.trials if t.started is not None]
        ends = [t.completed for t in self.trials if t.completed is not None]
        return (max(ends) - min(starts)).total_seconds() if starts and ends else None

    def trials_s(self) -> float | None:
        """The trials' durations added up."""
        durations = [t.duration_s for t in self.trials if t.duration_s is not None]
        return sum(durations) if durations else None


def load_record(study: optuna.Study, config: StudyConfig, *, storage: str) -> StudyRecord:
    """Read a study (finished, partial or running) into a :class:`StudyRecord`."""
    attrs = study.user_attrs
    return StudyRecord(
        config=config,
        storage=storage,
        trials=tuple(read_trials(study)),
        stage_one=StageOne.from_attrs(attrs),
        final=FinalEvaluation.from_attrs(attrs.get(_FINAL)),
    )
