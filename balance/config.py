"""Validated configuration: the one place where user input is checked.

Every hyperparameter states its unit here. Names are the ones used by the CLI
flags, study files, Optuna parameters, DataFrame columns and the report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_DATA = ("mnist1d", "digits", "fashion-mnist", "mnist", "cifar10")
"""Data sets balance knows by name; ``mnist1d`` and ``digits`` need no files."""

BUILTIN_MODELS = ("mlp", "cnn1d", "convnet", "resnet20", "resnet56")
"""Models balance knows by name; anything else must be ``"module:function"``."""

OptimizerName = Literal["sgd", "adam", "adamw"]
Policy = Literal["smith", "fastai", "constant", "step", "cosine"]
ONE_CYCLE_POLICIES = ("smith", "fastai")
SweepMode = Literal["exp", "linear"]
SuggestionRule = Literal["steepest", "valley", "minimum", "accuracy"]

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# pct_start defaults: Smith's three-phase cycle spends 45% rising, 45% falling and
# the last 10% annihilating; fastai's two-phase cosine cycle rises for 25%.
DEFAULT_PCT_START = {"smith": 0.45, "fastai": 0.25}


class ConfigError(ValueError):
    """A user error found after parsing (missing files, sizes that do not fit).

    The message is one line naming the field, the rule and the value.
    """


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _check_name(value: str, builtin: tuple[str, ...], what: str) -> str:
    if value in builtin or _IMPORT_PATH.match(value):
        return value
    raise ValueError(
        f"unknown {what} {value!r}; use one of {', '.join(builtin)} or 'package.module:function'"
    )


class TrainConfig(_Strict):
    """Everything one training run needs: data, model, optimizer, schedule, budget.

    Weight decay is PyTorch's ``weight_decay``: for ``sgd`` and ``adam`` it is an
    L2 penalty coupled to the gradient (``grad += weight_decay * w``); for
    ``adamw`` it is decoupled (``w -= lr * weight_decay * w``). Either way it is
    applied per optimizer step and, unless ``decay_norm_and_bias`` is set, only
    to weights with two or more dimensions (not to biases or norm parameters).
    """

    # data
    data: str = Field("mnist1d", description="built-in data set name or 'module:function'")
    data_path: Path | None = Field(None, description="folder with the files of a local data set")
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="share of the training data held out for validation"
    )
    split_seed: int = Field(0, ge=0, description="seed of the train/validation split")
    augment: bool = Field(False, description="random crop (pad 4) and horizontal flip, images only")
    # model
    model: str = Field("cnn1d", description="built-in model name or 'module:function'")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability")
    # optimizer
    optimizer: OptimizerName = "sgd"
    momentum: float = Field(
        0.9, ge=0.0, lt=1.0, description="SGD momentum or Adam beta1 (non-1cycle policies)"
    )
    nesterov: bool = False
    weight_decay: float = Field(
        5e-4, ge=0.0, description="per-step coefficient; L2 for sgd/adam, decoupled for adamw"
    )
    decay_norm_and_bias: bool = Field(False, description="also decay biases and norm parameters")
    # schedule
    policy: Policy = Field("smith", description="smith/fastai (1cycle) or a baseline")
    max_lr: float | None = Field(
        None, gt=0.0, description="peak LR; None runs the LR range test to find it"
    )
    div_factor: float = Field(25.0, gt=1.0, description="1cycle start LR = max_lr / div_factor")
    final_div_factor: float = Field(
        1e4, gt=0.0, description="1cycle end LR = start LR / final_div_factor"
    )
    pct_start: float | None = Field(
        None, gt=0.0, lt=1.0, description="share of steps rising to max_lr (default per policy)"
    )
    base_momentum: float = Field(0.85, ge=0.0, lt=1.0, description="momentum at the LR peak")
    max_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="momentum at the LR ends")
    # budget
    batch_size: int = Field(100, ge=1, description="examples per optimizer step")
    epochs: int = Field(25, ge=1, description="passes over the training split")
    seed: int = Field(0, ge=0, description="seed of initialisation, shuffling and dropout")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("data")
    @classmethod
    def _data_known(cls, value: str) -> str:
        return _check_name(value, BUILTIN_DATA, "data set")

    @field_validator("model")
    @classmethod
    def _model_known(cls, value: str) -> str:
        return _check_name(value, BUILTIN_MODELS, "model")

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or re.match(r"^cuda:\d+$", value):
            return value
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        if self.policy == "smith" and self.pct_start is not None and self.pct_start >= 0.5:
            raise ValueError(
                f"pct_start must be below 0.5 for the three-phase smith policy "
                f"(rise and fall take pct_start each), got {self.pct_start}"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.base_momentum > self.max_momentum:
            raise ValueError(
                f"base_momentum ({self.base_momentum}) must not exceed "
                f"max_momentum ({self.max_momentum})"
            )
        if self.data in ("fashion-mnist", "mnist", "cifar10") and self.data_path is None:
            raise ValueError(f"data_path is required for data set {self.data!r}")
        return self

    @property
    def one_cycle(self) -> bool:
        """Whether the policy is a 1cycle policy (smith or fastai)."""
        return self.policy in ONE_CYCLE_POLICIES

    @property
    def resolved_pct_start(self) -> float:
        """``pct_start``, or the policy's default when it was left unset."""
        if self.pct_start is not None:
            return self.pct_start
        return DEFAULT_PCT_START.get(self.policy, 0.3)


class RangeTestConfig(_Strict):
    """Settings of the LR range test (the sweep, its smoothing and its stop)."""

    start_lr: float = Field(1e-5, gt=0.0, description="first LR of the sweep")
    end_lr: float = Field(10.0, gt=0.0, description="last LR of the sweep")
    num_steps: int = Field(100, ge=5, description="optimizer steps in the sweep")
    mode: SweepMode = Field("exp", description="exp: geometric LR steps; linear: even steps")
    ema_beta: float = Field(
        0.9, ge=0.0, lt=1.0, description="EMA smoothing of the loss (bias-corrected)"
    )
    diverge_threshold: float = Field(
        5.0, gt=1.0, description="stop when smoothed loss > threshold x best loss"
    )
    val_every: int = Field(
        0, ge=0, description="measure validation accuracy every k steps (0: never)"
    )
    val_size: int = Field(512, ge=1, description="size of the fixed validation subset")
    skip_start: int = Field(3, ge=0, description="points left out at the start of the curve")
    rule: SuggestionRule = Field("valley", description="suggestion used as max_lr")

    @model_validator(mode="after")
    def _lr_order(self) -> RangeTestConfig:
        if self.end_lr <= self.start_lr:
            raise ValueError(
                f"end_lr must exceed start_lr, got start_lr={self.start_lr}, end_lr={self.end_lr}"
            )
        if self.rule == "accuracy" and self.val_every == 0:
            raise ValueError("rule 'accuracy' needs val_every > 0")
        return self


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: ``field: message (got value)``."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        field = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "config")
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"{field}: {message}{shown}")
    return lines


def build(model: type[_Strict], values: dict[str, Any]) -> Any:
    """Validate ``values`` into ``model``, raising :class:`ConfigError` with every problem."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ConfigError("; ".join(format_validation_error(error))) from None
