"""The searched regularizers: grid cells, trial suggestions and cell keys."""

from __future__ import annotations

import itertools
from typing import Any

import optuna

from balance.config import SEARCHED, FloatRange, SearchSpace, TrainConfig


def cell_key(params: dict[str, Any]) -> str:
    """A stable text key of the searched values, e.g. ``weight_decay=0.0005|dropout=0.1``.

    Only searched parameters belong in ``params``: the key of a queued cell and of
    the trial that trains it must be equal.
    """
    return "|".join(f"{name}={params[name]!r}" for name in SEARCHED if name in params)


def grid_cells(space: SearchSpace) -> list[dict[str, Any]]:
    """Every cell of a grid space, in the order the axes list them."""
    axes = space.axes()
    values = [axis for axis in axes.values() if isinstance(axis, list)]
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*values)]


def suggest(trial: optuna.Trial, space: SearchSpace, base: TrainConfig) -> dict[str, Any]:
    """The trial's ``weight_decay``, ``dropout`` and ``batch_size`` (unsearched ones from base)."""
    params: dict[str, Any] = {}
    for name in SEARCHED:
        axis = getattr(space, name)
        if axis is None:
            params[name] = getattr(base, name)
        elif isinstance(axis, FloatRange):
            params[name] = trial.suggest_float(name, axis.low, axis.high, log=axis.log)
        else:
            params[name] = trial.suggest_categorical(name, axis)
    return params


def batch_sizes(space: SearchSpace, base: TrainConfig) -> list[int]:
    """Batch sizes a study trains with (each needs its own max LR)."""
    return sorted(space.batch_size) if space.batch_size else [base.batch_size]
