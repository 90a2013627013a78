"""What a study stores, typed: seed runs, trials, stage 1 and the final test evaluation.

Optuna keeps balance's data as JSON user attributes of the study and its trials.
This module is their one owner: every key is named here, every write goes
through a function here, and :func:`load_record` reads a study once into a
:class:`StudyRecord` that the analysis and the report take as plain data.

It also holds the one definition of the best cell (:func:`best_cell`), used by the
test evaluation, the verdict, the heatmaps, the scatter and ``summary.json``.
"""

from __future__ import annotations

import ast
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from balance.config import SEARCHED, StudyConfig
from balance.jsonable import jsonable
from balance.range_test import RangeTestResult
from balance.storage import trial_id

# Study attributes.
_SIGNATURE = "signature"  # what must match for a file to resume the study
_CONFIG = "config"  # the study file's configuration when the study was created
_RANGE_TESTS = "range_tests"  # stage 1: batch size -> RangeTestResult.to_dict()
_MAX_LRS = "max_lr"  # stage 1: batch size -> max LR
_FINAL = "final"  # the test evaluation of the chosen setting and the baseline

# Trial attributes.
_WORKER = "worker"  # {"host", "pid"} of the process training the trial
_RUNS = "runs"  # one SeedRun.to_attrs() per seed, saved as each seed ends
_CELL = "cell"  # cell_key of the grid cell (queued cells carry it from the start)
_SURPLUS = "surplus"  # a grid trial Optuna created with no queued cell: trains nothing
_MAX_LR = "max_lr"  # the max LR the trial trained with
_DIVERGED = "diverged"  # {"seed", "step", "lr"} of the run whose loss became non-finite
_FAIL_REASON = "fail_reason"  # why a trial failed without diverging ("worker died")
_REQUEUED_FROM = "requeued_from"  # the interrupted trial whose cell this queued trial retrains
_VAL_ACCURACY_STD = "val_accuracy_std"
_VAL_LOSS = "val_loss"
_TRAIN_LOSS = "train_loss"

STATES = ("complete", "pruned", "running", "waiting", "fail")
"""A trial's state, as every frame, table and count names it (Optuna's, lower case)."""


def state_name(state: TrialState) -> str:
    """The vocabulary of :data:`STATES` for an Optuna trial state."""
    return state.name.lower()


# --------------------------------------------------------------------------- cells


def cell_key(params: dict[str, Any]) -> str:
    """A stable text key of the searched values, e.g. ``weight_decay=0.0005|dropout=0.1``.

    Only searched parameters belong in ``params``: the key of a queued cell and of
    the trial that trains it must be equal. Axes come in :data:`~balance.config.SEARCHED`
    order; the key is stored, so that order must never change.
    """
    return "|".join(f"{name}={params[name]!r}" for name in SEARCHED if name in params)


def parse_cell_key(key: str) -> dict[str, Any]:
    """The values of a :func:`cell_key` (``{}`` for an empty key)."""
    values: dict[str, Any] = {}
    for part in filter(None, key.split("|")):
        name, _, text = part.partition("=")
        values[name] = ast.literal_eval(text)
    return values


# --------------------------------------------------------------------------- seed runs


class Curve(NamedTuple):
    """Per-epoch validation and training figures of one seed run."""

    epoch: list[int]
    train_loss: list[float | None]
    val_loss: list[float | None]
    val_accuracy: list[float | None]


class RunDivergence(NamedTuple):
    """Where a seed run's loss became non-finite."""

    step: int
    lr: float


@dataclass(frozen=True)
class SeedRun:
    """One seed's training run inside a trial: its last epoch's figures and its curve.

    ``val_accuracy`` is ``None`` for a run stopped before its first epoch ended.
    ``train_time`` is ``None`` for a run cut short by pruning.
    """

    seed: int
    val_accuracy: float | None
    val_loss: float | None
    train_loss: float | None
    steps: int
    curve: Curve
    diverged: RunDivergence | None = None
    train_time: float | None = None

    @property
    def finished(self) -> bool:
        """Whether the run measured its validation accuracy and did not diverge."""
        return self.val_accuracy is not None and self.diverged is None

    @classmethod
    def from_history(cls, seed: int, history: Sequence[Any], result: Any | None) -> SeedRun:
        """A run from its :class:`~balance.train.EpochMetrics` so far and, once it ended,
        its :class:`~balance.train.TrainResult` (``None`` when pruning stopped it)."""
        last = history[-1] if history else None
        diverged = None
        if result is not None and result.diverged is not None:
            diverged = RunDivergence(result.diverged.step, result.diverged.lr)
        return cls(
            seed=seed,
            val_accuracy=last.val_accuracy if last else None,
            val_loss=last.val_loss if last else None,
            train_loss=last.train_loss if last else None,
            steps=result.steps if result is not None else (last.step if last else 0),
            curve=Curve(
                [m.epoch for m in history],
                [m.train_loss for m in history],
                [m.val_loss for m in history],
                [m.val_accuracy for m in history],
            ),
            diverged=diverged,
            train_time=result.train_time if result is not None else None,
        )

    def to_attrs(self) -> dict[str, Any]:
        """The stored form (strict JSON)."""
        attrs: dict[str, Any] = {
            "seed": self.seed,
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            "train_loss": self.train_loss,
            "steps": self.steps,
            "curve": self.curve._asdict(),
            "diverged": None if self.diverged is None else self.diverged._asdict(),
        }
        if self.train_time is not None:
            attrs["train_time"] = self.train_time
        return jsonable(attrs)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> SeedRun:
        """Read the stored form back."""
        curve = attrs.get("curve") or {}
        diverged = attrs.get("diverged")
        return cls(
            seed=int(attrs.get("seed", 0)),
            val_accuracy=_optional_float(attrs.get("val_accuracy")),
            val_loss=_optional_float(attrs.get("val_loss")),
            train_loss=_optional_float(attrs.get("train_loss")),
            steps=int(attrs.get("steps", 0)),
            curve=Curve(*(list(curve.get(name, [])) for name in Curve._fields)),
            diverged=None if not diverged else RunDivergence(int(diverged["step"]), diverged["lr"]),
            train_time=_optional_float(attrs.get("train_time")),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


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
            max_lr=_optional_float(attrs.get(_MAX_LR)),
            runs=tuple(SeedRun.from_attrs(run) for run in attrs.get(_RUNS, [])),
            diverged=attrs.get(_DIVERGED) or None,
            fail_reason=str(attrs.get(_FAIL_REASON, "")),
            surplus=bool(attrs.get(_SURPLUS, False)),
            worker=attrs.get(_WORKER),
            requeued_from=attrs.get(_REQUEUED_FROM),
            started=trial.datetime_start,
            completed=trial.datetime_complete,
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


def mark_surplus(trial: optuna.Trial) -> None:
    """Mark a grid trial that found no queued cell: it trains nothing."""
    trial.set_user_attr(_SURPLUS, True)


def set_cell(trial: optuna.Trial, key: str, max_lr: float) -> None:
    """Record the trial's cell and the max LR it trains with."""
    trial.set_user_attr(_CELL, key)
    trial.set_user_attr(_MAX_LR, max_lr)


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
    study: optuna.Study, cell: dict[str, Any], *, requeued_from: int | None = None
) -> None:
    """Queue a grid cell for the next free worker, tagged with its key."""
    attrs: dict[str, Any] = {_CELL: cell_key(cell)}
    if requeued_from is not None:
        attrs[_REQUEUED_FROM] = requeued_from
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
    or holds one test that the other batch sizes were scaled from.
    """

    max_lrs: dict[int, float] = field(default_factory=dict)
    range_tests: dict[int, RangeTestResult] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether stage 1 has fixed the LRs."""
        return bool(self.max_lrs)

    @classmethod
    def from_study(cls, study: optuna.Study) -> StageOne:
        """Read stage 1 from a study's attributes (empty before it ran)."""
        return cls._from_attrs(study.user_attrs)

    @classmethod
    def _from_attrs(cls, attrs: dict[str, Any]) -> StageOne:
        tests = attrs.get(_RANGE_TESTS, {})
        return cls(
            max_lrs={int(size): float(lr) for size, lr in attrs.get(_MAX_LRS, {}).items()},
            range_tests={
                int(size): RangeTestResult.from_dict(tests[size]) for size in sorted(tests, key=int)
            },
        )


def save_stage_one(study: optuna.Study, stage: StageOne) -> None:
    """Store stage 1's range tests and LRs (tests first: the LRs mark stage 1 as done)."""
    tests = {str(size): test.to_dict() for size, test in stage.range_tests.items()}
    study.set_user_attr(_RANGE_TESTS, tests)
    study.set_user_attr(_MAX_LRS, {str(size): lr for size, lr in stage.max_lrs.items()})


# --------------------------------------------------------------------------- the test split


@dataclass(frozen=True)
class TestRun:
    """One seed of the chosen setting or the baseline, measured on the test split."""

    __test__ = False  # not a pytest class

    seed: int
    test_accuracy: float | None
    steps: list[int]
    test_curve: list[float | None]
    diverged: bool


@dataclass(frozen=True)
class TestSide:
    """The chosen setting's or the baseline's test runs, with their mean and std."""

    __test__ = False

    max_lr: float | None
    test_accuracy: float | None
    test_accuracy_std: float | None
    runs: tuple[TestRun, ...]
    config: dict[str, Any] | None = None  # the baseline's overrides of the base run

    @classmethod
    def of_runs(
        cls, max_lr: float | None, runs: Sequence[TestRun], config: dict[str, Any] | None = None
    ) -> TestSide:
        """Summarize runs: the mean and population std of their test accuracies."""
        values = [run.test_accuracy for run in runs if run.test_accuracy is not None]
        mean = statistics.fmean(values) if values else None
        std = statistics.pstdev(values) if values else None
        return cls(max_lr, mean, std, tuple(runs), config)

    def to_attrs(self) -> dict[str, Any]:
        """The stored form (the baseline's ``config`` first, as it always was)."""
        attrs: dict[str, Any] = {} if self.config is None else {"config": self.config}
        attrs.update(
            max_lr=self.max_lr,
            test_accuracy=self.test_accuracy,
            test_accuracy_std=self.test_accuracy_std,
            runs=[run.__dict__ for run in self.runs],
        )
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TestSide:
        """Read the stored form back."""
        return cls(
            max_lr=_optional_float(attrs.get("max_lr")),
            test_accuracy=_optional_float(attrs.get("test_accuracy")),
            test_accuracy_std=_optional_float(attrs.get("test_accuracy_std")),
            runs=tuple(
                TestRun(
                    seed=int(run["seed"]),
                    test_accuracy=_optional_float(run.get("test_accuracy")),
                    steps=[int(step) for step in run.get("steps", [])],
                    test_curve=list(run.get("test_curve", [])),
                    diverged=bool(run.get("diverged", False)),
                )
                for run in attrs.get("runs", [])
            ),
            config=attrs.get("config"),
        )


@dataclass(frozen=True)
class FinalEvaluation:
    """The chosen cell and the baseline, retrained once per seed and measured on test.

    ``trial`` is the first trial of the chosen cell; ``params`` its full setting.
    """

    trial: int
    params: dict[str, Any]
    chosen: TestSide
    baseline: TestSide | None = None

    @property
    def cell(self) -> dict[str, Any]:
        """The searched values of the chosen setting."""
        return {name: self.params[name] for name in SEARCHED if name in self.params}

    def to_attrs(self) -> dict[str, Any]:
        """The stored form, also ``summary.json``'s ``test``."""
        attrs: dict[str, Any] = {
            "trial": self.trial,
            "params": self.params,
            "chosen": self.chosen.to_attrs(),
        }
        if self.baseline is not None:
            attrs["baseline"] = self.baseline.to_attrs()
        return jsonable(attrs)

    @classmethod
    def from_study(cls, study: optuna.Study) -> FinalEvaluation | None:
        """Read the stored evaluation (``None`` before it ran)."""
        return cls._from_attrs(study.user_attrs.get(_FINAL))

    @classmethod
    def _from_attrs(cls, attrs: dict[str, Any] | None) -> FinalEvaluation | None:
        if not attrs:
            return None
        baseline = attrs.get("baseline")
        return cls(
            trial=int(attrs["trial"]),
            params=dict(attrs["params"]),
            chosen=TestSide.from_attrs(attrs["chosen"]),
            baseline=TestSide.from_attrs(baseline) if baseline else None,
        )


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


# --------------------------------------------------------------------------- the best cell


class CellResult(NamedTuple):
    """One setting's validation accuracy over its counted runs (every trial of it pooled)."""

    key: str
    params: dict[str, Any]
    mean: float
    std: float  # population std over seeds (ddof 0)
    seeds: int
    trials: tuple[int, ...]  # the trials that measured it, by number


def cell_results(trials: Iterable[TrialRecord], base: dict[str, Any]) -> list[CellResult]:
    """Every cell with a counted run, with its mean and std of validation accuracy.

    ``base`` gives unsearched axes their value (the base run's), so every cell has all
    of :data:`~balance.config.SEARCHED`.
    """
    pooled: dict[str, tuple[dict[str, Any], list[float], list[int]]] = {}
    for trial in trials:
        runs = trial.counted_runs
        if not runs or trial.surplus:
            continue
        params = {name: trial.params.get(name, base[name]) for name in SEARCHED}
        key = trial.cell or cell_key(trial.params)
        _, values, numbers = pooled.setdefault(key, (params, [], []))
        values.extend(float(run.val_accuracy) for run in runs if run.val_accuracy is not None)
        numbers.append(trial.number)
    return [
        CellResult(key, params, statistics.fmean(v), statistics.pstdev(v), len(v), tuple(n))
        for key, (params, v, n) in pooled.items()
    ]


def rank(loss: float, seeds: int, params: dict[str, Any]) -> tuple[float, ...]:
    """The sort key that ranks cells, best first: the one rule behind :func:`best_cell`.

    ``loss`` is the cell's mean with the sign that makes lower better (minus the
    mean validation accuracy). Ties (equal means) go to the cell measured with more
    seeds, then to the first in numeric order of weight decay, dropout and batch
    size: the least regularized setting.
    """
    return (loss, -seeds, *(float(params[name]) for name in SEARCHED))


def best_cell(cells: Iterable[CellResult]) -> CellResult | None:
    """The best cell: the highest mean validation accuracy over seeds, ties as :func:`rank`.

    ``None`` when no cell has a counted run.
    """
    return min(cells, key=lambda cell: rank(-cell.mean, cell.seeds, cell.params), default=None)


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
        return cell_results(self.trials, self.config.train.model_dump())

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
        stage_one=StageOne._from_attrs(attrs),
        final=FinalEvaluation._from_attrs(attrs.get(_FINAL)),
    )


def finite_or_nan(value: float | None) -> float:
    """``value`` as a float, NaN for ``None`` (for frames)."""
    return math.nan if value is None else float(value)
