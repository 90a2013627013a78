"""What one training run produced, in the form a study stores it (strict JSON).

A trial's seed runs (:class:`SeedRun`) and the final test evaluation
(:class:`FinalEvaluation`) each convert to and from the plain dicts that
:mod:`balance.record` keeps in Optuna's attributes.
"""

from __future__ import annotations

import base64
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from balance.config import SEARCHED
from balance.jsonable import jsonable


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


def pack_correct(correct: Sequence[bool] | np.ndarray) -> str:
    """Per-example correctness as text: one bit an example, base64 (1,200 examples: 200 chars)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def unpack_correct(packed: str, count: int) -> np.ndarray:
    """The ``count`` booleans :func:`pack_correct` packed."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))
    return bits[:count].astype(bool)


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
    # Final validation correctness, one bit an example (pack_correct), and the count: so
    # cells can be compared on the same examples. None for runs without a final figure.
    val_correct: str | None = None
    val_examples: int | None = None

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
            val_correct=getattr(result, "val_correct", None),
            val_examples=getattr(result, "val_examples", None),
        )

    def correct(self) -> np.ndarray | None:
        """Final validation correctness per example (``None`` when not stored)."""
        if self.val_correct is None or self.val_examples is None:
            return None
        return unpack_correct(self.val_correct, self.val_examples)

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
        if self.val_correct is not None:
            attrs["val_correct"] = self.val_correct
            attrs["val_examples"] = self.val_examples
        return jsonable(attrs)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> SeedRun:
        """Read the stored form back."""
        curve = attrs.get("curve") or {}
        diverged = attrs.get("diverged")
        return cls(
            seed=int(attrs.get("seed", 0)),
            val_accuracy=optional_float(attrs.get("val_accuracy")),
            val_loss=optional_float(attrs.get("val_loss")),
            train_loss=optional_float(attrs.get("train_loss")),
            steps=int(attrs.get("steps", 0)),
            curve=Curve(*(list(curve.get(name, [])) for name in Curve._fields)),
            diverged=None if not diverged else RunDivergence(int(diverged["step"]), diverged["lr"]),
            train_time=optional_float(attrs.get("train_time")),
            val_correct=attrs.get("val_correct"),
            val_examples=None if attrs.get("val_examples") is None else int(attrs["val_examples"]),
        )


def optional_float(value: Any) -> float | None:
    """``value`` as a float, ``None`` kept."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class EvaluationRun:
    """One seed of the chosen setting or the baseline, measured on the test split."""

    seed: int
    test_accuracy: float | None
    steps: list[int]
    test_curve: list[float | None]
    diverged: bool
    test_correct: str | None = None  # per-example test correctness (pack_correct)
    test_examples: int | None = None

    def correct(self) -> np.ndarray | None:
        """Final test correctness per example (``None`` when not stored)."""
        if self.test_correct is None or self.test_examples is None:
            return None
        return unpack_correct(self.test_correct, self.test_examples)


@dataclass(frozen=True)
class EvaluationSide:
    """The chosen setting's or the baseline's test runs, with their mean and std."""

    max_lr: float | None
    test_accuracy: float | None
    test_accuracy_std: float | None
    runs: tuple[EvaluationRun, ...]
    config: dict[str, Any] | None = None  # the baseline's overrides of the base run

    @classmethod
    def of_runs(
        cls,
        max_lr: float | None,
        runs: Sequence[EvaluationRun],
        config: dict[str, Any] | None = None,
    ) -> EvaluationSide:
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
            runs=[
                {
                    key: value
                    for key, value in run.__dict__.items()
                    if value is not None or key not in ("test_correct", "test_examples")
                }
                for run in self.runs
            ],
        )
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> EvaluationSide:
        """Read the stored form back."""
        return cls(
            max_lr=optional_float(attrs.get("max_lr")),
            test_accuracy=optional_float(attrs.get("test_accuracy")),
            test_accuracy_std=optional_float(attrs.get("test_accuracy_std")),
            runs=tuple(
                EvaluationRun(
                    seed=int(run["seed"]),
                    test_accuracy=optional_float(run.get("test_accuracy")),
                    steps=[int(step) for step in run.get("steps", [])],
                    test_curve=list(run.get("test_curve", [])),
                    diverged=bool(run.get("diverged", False)),
                    test_correct=run.get("test_correct"),
                    test_examples=(
                        None if run.get("test_examples") is None else int(run["test_examples"])
                    ),
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
    chosen: EvaluationSide
    baseline: EvaluationSide | None = None

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
    def from_attrs(cls, attrs: dict[str, Any] | None) -> FinalEvaluation | None:
        """Read the stored form back (``None`` for nothing stored)."""
        if not attrs:
            return None
        baseline = attrs.get("baseline")
        return cls(
            trial=int(attrs["trial"]),
            params=dict(attrs["params"]),
            chosen=EvaluationSide.from_attrs(attrs["chosen"]),
            baseline=EvaluationSide.from_attrs(baseline) if baseline else None,
        )


def finite_or_nan(value: float | None) -> float:
    """``value`` as a float, NaN for ``None`` (for frames)."""
    return math.nan if value is None else float(value)
