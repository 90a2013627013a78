"""What a study sweeps: the search axes, grid or range, checked like the rest of the config.

Axis names are the ones used by study files, Optuna parameters, cell keys, DataFrame
columns and the report. ``lr_multiplier`` scales stage 1's max LR for the trial's
batch size (1.0 is the range test's answer), so the LR can be swept against the
regularizers it trades with.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

SEARCHED = ("weight_decay", "dropout", "batch_size", "lr_multiplier")
"""Every searchable axis, in the fixed order of cell keys (stored: never reorder)."""

BASE_LR_MULTIPLIER = 1.0
"""An unsearched ``lr_multiplier``: the range test's max LR as it is."""

MAX_GRID_CELLS = 10_000

NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
DropoutValue = Annotated[float, Field(ge=0.0, lt=1.0)]
BatchSize = Annotated[int, Field(ge=1)]
AXIS_TAGS = ("values", "range")
"""The tags of an axis' two forms, left out of validation error locations."""


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields and non-finite floats (nan, inf).

    A typo is an error, never ignored; an infinite weight decay or LR would pass the
    bounds of a field and then fail every trial.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


def _axis_kind(value: Any) -> str:
    return "range" if isinstance(value, dict | BaseModel) else "values"


class FloatRange(StrictModel):
    """A continuous range for Bayesian search: ``{ low = 1e-6, high = 1e-2, log = true }``."""

    low: float = Field(ge=0.0)
    high: float = Field(ge=0.0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.high <= self.low:
            raise ValueError(f"high must exceed low, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0.0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        return self


WeightDecayAxis = Annotated[
    Annotated[list[NonNegativeFloat], Tag("values")] | Annotated[FloatRange, Tag("range")],
    Discriminator(_axis_kind),
]
DropoutAxis = Annotated[
    Annotated[list[DropoutValue], Tag("values")] | Annotated[FloatRange, Tag("range")],
    Discriminator(_axis_kind),
]
MultiplierAxis = Annotated[
    Annotated[list[PositiveFloat], Tag("values")] | Annotated[FloatRange, Tag("range")],
    Discriminator(_axis_kind),
]


class SearchSpace(StrictModel):
    """The axes a study sweeps. A list is a grid axis (or categorical choice), a table a range.

    ``lr_multiplier`` multiplies the max LR stage 1 fixed for the trial's batch size
    (the 1cycle peak; the minimum LR follows as peak / ``div_factor``).
    """

    weight_decay: WeightDecayAxis | None = None
    dropout: DropoutAxis | None = None
    batch_size: list[BatchSize] | None = None
    lr_multiplier: MultiplierAxis | None = None

    @field_validator(*SEARCHED)
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("must list at least one value")
            if len(set(value)) != len(value):
                raise ValueError(f"lists a value twice: {value}")
        return value

    @model_validator(mode="after")
    def _some_axis(self) -> SearchSpace:
        if all(getattr(self, name) is None for name in SEARCHED):
            raise ValueError(f"search names none of {', '.join(SEARCHED)}")
        dropout = self.dropout
        if isinstance(dropout, FloatRange) and dropout.high >= 1.0:
            raise ValueError(f"dropout range must stay below 1, got high={dropout.high}")
        multiplier = self.lr_multiplier
        if isinstance(multiplier, FloatRange) and multiplier.low <= 0.0:
            raise ValueError(f"lr_multiplier range needs low > 0, got low={multiplier.low}")
        return self

    def axes(self) -> dict[str, list[Any] | FloatRange]:
        """The searched parameters, in the fixed order of :data:`SEARCHED`."""
        return {name: getattr(self, name) for name in SEARCHED if getattr(self, name) is not None}

    @property
    def is_grid(self) -> bool:
        """Whether every axis is a list of values."""
        return all(isinstance(axis, list) for axis in self.axes().values())

    @property
    def n_cells(self) -> int:
        """Number of grid cells (only meaningful when :attr:`is_grid`)."""
        count = 1
        for axis in self.axes().values():
            count *= len(axis) if isinstance(axis, list) else 1
        return count

    def grid_cells(self) -> list[dict[str, Any]]:
        """Every cell of the list axes, in the order the axes list their values."""
        axes = {name: axis for name, axis in self.axes().items() if isinstance(axis, list)}
        return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def base_setting(train: Any) -> dict[str, Any]:
    """Every axis of :data:`SEARCHED` at the base run's value (``train`` a TrainConfig).

    The base run has no ``lr_multiplier``: it trains at stage 1's max LR, 1.0 times.
    """
    return {
        name: BASE_LR_MULTIPLIER if name == "lr_multiplier" else getattr(train, name)
        for name in SEARCHED
    }
