"""Results of a range test: the curves, every rule's suggestion, the chosen LRs, the verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from balance.config import ConfigError
from balance.jsonable import jsonable


class RangeTestWarning(UserWarning):
    """A range-test curve that its suggestions should not be trusted on."""


class RangeTestError(ConfigError):
    """A range test that cannot name a max LR (the loss never turned); one line, exit 2."""


@dataclass(frozen=True)
class SuperConvergence:
    """Whether the loss keeps falling over a wide span of LRs (super-convergence looks possible).

    ``verdict`` is ``"likely"``, ``"unlikely"`` or ``"unknown"`` (the loss never
    fell). ``span`` is the number of decades of LR from ``descent_lr`` (where the
    smoothed loss has made half its drop) to ``turn_lr`` (where it turns). The
    accuracy fields describe the validation curve when one was measured.
    """

    verdict: str
    descent_lr: float | None
    turn_lr: float | None
    span: float | None
    peak_accuracy: float | None
    peak_lr: float | None
    plateau_end_lr: float | None
    explanation: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SuperConvergence:
        """Rebuild from ``asdict`` output; fields an older version did not store are None."""
        values: dict[str, Any] = {item.name: d.get(item.name) for item in fields(cls)}
        values["verdict"] = str(d.get("verdict", "unknown"))
        values["explanation"] = str(d.get("explanation", ""))
        return cls(**values)


@dataclass(frozen=True)
class Probe:
    """One confirmation run: a complete 1cycle training at ``lr``, its final validation accuracy.

    ``val_accuracy`` is ``None`` when the run diverged.
    """

    lr: float
    val_accuracy: float | None
    steps: int


@dataclass
class RangeTestResult:
    """Curves, suggestions, chosen LRs, diagnostic and warnings of one range test.

    ``lrs``, ``losses`` and ``smoothed`` have one entry per step taken (a
    non-finite loss is kept in ``losses`` and its ``smoothed`` entry is NaN).
    ``rule`` is the rule whose LR became ``max_lr``: the configured one unless it
    could not answer (a warning then names the fallback; ``"start_lr"`` when no
    rule could). ``min_lr`` is ``max_lr / div_factor``, the 1cycle start LR. ``repeats``
    sweeps from fresh seeds were averaged into these curves.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    val_steps: list[int]
    val_lrs: list[float]
    val_losses: list[float]
    val_accuracies: list[float]
    diverged_at: int | None
    suggestions: dict[str, float | None]
    rule: str
    max_lr: float
    min_lr: float
    batch_size: int
    diagnostic: SuperConvergence
    warnings: list[str] = field(default_factory=list)
    repeats: int = 1
    rule_spread: float | None = None  # largest / smallest answer of the max-LR rules
    curve_max_lr: float | None = None  # the curve's answer, when probes then chose max_lr
    probes: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A dict that strict JSON accepts: non-finite floats become ``None``."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RangeTestResult:
        """Rebuild a result from :meth:`to_dict` output (unknown keys are ignored)."""
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in d.items() if key in known}
        for key in ("lrs", "losses", "smoothed", "val_lrs", "val_losses", "val_accuracies"):
            values[key] = [math.nan if value is None else float(value) for value in values[key]]
        values["val_steps"] = [int(step) for step in values["val_steps"]]
        values["suggestions"] = dict(values["suggestions"])
        values["warnings"] = list(values.get("warnings", []))
        values["diagnostic"] = SuperConvergence.from_dict(values["diagnostic"])
        values["probes"] = [Probe(**probe) for probe in values.get("probes", [])]
        return cls(**values)
