"""Validated configuration: the one place where user input is checked.

Every hyperparameter states its unit here. Names are the ones used by the CLI
flags, study files, Optuna parameters, DataFrame columns and the report. The
search axes live in :mod:`balance.search_space` and are re-exported here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from balance.search_space import (
    MAX_GRID_CELLS,
    SEARCHED,
    FloatRange,
    SearchSpace,
    StrictModel,
    base_setting,
)
from balance.validation import ConfigError, build, format_validation_error

__all__ = [
    "MAX_GRID_CELLS",
    "SEARCHED",
    "ConfigError",
    "FloatRange",
    "RangeTestConfig",
    "SearchSpace",
    "StudyConfig",
    "TrainConfig",
    "base_setting",
    "build",
    "format_validation_error",
]

BUILTIN_DATA = ("mnist1d", "mnist1d-10k", "digits", "fashion-mnist", "mnist", "cifar10")
"""Data sets balance knows by name; ``mnist1d``, ``mnist1d-10k`` and ``digits`` need no files."""

BUILTIN_MODELS = ("mlp", "cnn1d", "convnet", "resnet20", "resnet56")
"""Models balance knows by name; anything else must be ``"module:function"``."""

OptimizerName = Literal["sgd", "adam", "adamw"]
Policy = Literal["smith", "fastai", "constant", "step", "cosine"]
ONE_CYCLE_POLICIES = ("smith", "fastai")
SweepMode = Literal["exp", "linear"]
SuggestionRule = Literal["onset", "minimum", "steepest", "valley", "accuracy"]
# Lightning's names: fp32 throughout, or autocast to bfloat16 / float16 (with a GradScaler).
Precision = Literal["32", "bf16-mixed", "16-mixed"]

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# pct_start defaults: Smith's three-phase cycle spends 45% rising, 45% falling and
# the last 10% annihilating; fastai's two-phase cosine cycle rises for 25%.
DEFAULT_PCT_START = {"smith": 0.45, "fastai": 0.25}


_Strict = StrictModel


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
    precision: Precision = Field(
        "32", description="32, or autocast forward and loss: bf16-mixed, 16-mixed (loss scaled)"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_number(cls, value: Any) -> Any:
        # TOML's `precision = 32` is an integer: the name it means, not a type error.
        return "32" if value == 32 and type(value) is int else value

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
            raise ValueError(
                f"nesterov needs optimizer 'sgd' with momentum > 0, "
                f"got optimizer={self.optimizer!r}, momentum={self.momentum}"
            )
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


_Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
_Share = Annotated[float, Field(gt=0.0, le=1.0)]
_Decades = Annotated[float, Field(ge=0.0, le=6.0)]


class RangeTestConfig(_Strict):
    """Settings of the LR range test (the sweep, its smoothing and its stop)."""

    # Bounded: the sweep extends past end_lr by decades, which must stay finite.
    start_lr: float = Field(1e-5, gt=0.0, le=1e12, description="first LR of the sweep")
    end_lr: float = Field(10.0, gt=0.0, le=1e12, description="last LR of the sweep")
    num_steps: int = Field(200, ge=5, description="optimizer steps in the sweep")
    mode: SweepMode = Field("exp", description="exp: geometric LR steps; linear: even steps")
    ema_beta: _Beta = Field(0.98, description="causal EMA of the loss the divergence stop watches")
    diverge_threshold: float = Field(
        5.0, gt=1.0, description="stop when the EMA loss > threshold x its best"
    )
    smooth_beta: _Beta = Field(
        0.9, description="the rules read the loss through this EMA run forwards and back (no lag)"
    )
    extend_decades: _Decades = Field(
        2.0,
        description="a sweep whose loss has not turned by end_lr goes on at the same rate "
        "for up to this many decades of LR (0: never)",
    )
    val_every: int = Field(10, ge=0, description="validation accuracy every k steps (0: never)")
    val_size: int = Field(512, ge=1, description="size of the fixed validation subset")
    skip_start: int = Field(3, ge=0, description="points left out at the start of the curve")
    repeats: int = Field(
        3,
        ge=1,
        le=20,
        description="sweeps from fresh seeds (seed, seed+1, ...) averaged before the rules run",
    )
    onset_rise: float = Field(
        0.05, gt=0.0, lt=1.0, description="rule 'onset': turned once back up this share of its drop"
    )
    onset_fraction: _Share | None = Field(
        None, description="rule 'onset': share of the turning LR (default sgd 0.5, adam/adamw 1)"
    )
    minimum_fraction: _Share = Field(
        0.7, description="rule 'minimum': share of the loss-minimum LR (fastai: 0.1)"
    )
    accuracy_tolerance: _Beta = Field(
        0.02, description="validation accuracy (absolute) that still counts as the peak's plateau"
    )
    probes: int = Field(3, ge=0, le=15, description="1cycle runs around it; best validation wins")
    probe_step: float = Field(0.75, gt=0.0, le=2.0, description="decades between probe LRs")
    probe_refine: int = Field(1, ge=0, le=4, description="then rounds of 2, at half the last step")
    noise_scale: bool = Field(
        True, description="measure the gradient noise scale B_simple per batch size (an epoch each)"
    )
    # Chosen on the development cases of benchmarks/lr_suite.py, reported on its
    # evaluation cases (README, "How the max LR is chosen").
    rule: SuggestionRule = Field("onset", description="suggestion used as max_lr")

    @model_validator(mode="after")
    def _lr_order(self) -> RangeTestConfig:
        if self.end_lr <= self.start_lr:
            raise ValueError(
                f"end_lr must exceed start_lr, got start_lr={self.start_lr}, end_lr={self.end_lr}"
            )
        if self.rule == "accuracy" and self.val_every == 0:
            raise ValueError("rule 'accuracy' needs val_every > 0")
        return self

    @property
    def extend_to(self) -> float:
        """The last LR a sweep that has not turned may reach: ``end_lr x 10**extend_decades``."""
        return self.end_lr * 10**self.extend_decades


def trial_config(
    train: TrainConfig, setting: dict[str, Any], max_lrs: dict[int, float]
) -> TrainConfig:
    """The run of one setting: ``train`` with the setting's regularizers and batch size,
    at stage 1's max LR for that batch size times the setting's ``lr_multiplier``.

    ``setting`` holds searched values (:data:`SEARCHED`); an axis it lacks keeps
    the base run's value (:func:`base_setting`).
    """
    values = {**base_setting(train), **setting}
    multiplier = float(values.pop("lr_multiplier"))
    max_lr = max_lrs[int(values["batch_size"])] * multiplier
    if not math.isfinite(max_lr):  # each factor is finite; their product may not be
        raise ConfigError(f"lr_multiplier: {multiplier} x stage 1's max LR is not finite")
    return train.model_copy(update={**values, "max_lr": max_lr})


SamplerName = Literal["grid", "tpe", "gp", "random"]
PrunerName = Literal["none", "median", "hyperband"]
LrScaling = Literal["range-test", "fit", "linear", "sqrt", "none"]
PACK_SIZE_RULE = "must be an integer >= 1 or 'auto'"


def pack_size(value: Any) -> Any:
    """``value`` if it is a pack size (an int >= 1 or ``"auto"``); else ValueError."""
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise ValueError(PACK_SIZE_RULE)


PackSize = Annotated[int | Literal["auto"], BeforeValidator(pack_size)]
"""Trials a worker packs: a count, or ``"auto"`` (:mod:`balance.pack_probe`)."""


class StudyConfig(_Strict):
    """A study file: a base training run, the range test, the space and how to search it.

    Each trial trains ``seeds`` runs of the base configuration with the trial's
    ``weight_decay``, ``dropout`` and ``batch_size``, all for ``train.epochs``
    epochs, so batch sizes are compared at equal passes over the data. With
    ``race``, rounds of ``seeds`` more seeds go only to the cells not yet separated
    from the best, up to ``max_seeds`` a cell.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="study name")
    description: str = ""
    train: TrainConfig = Field(default_factory=TrainConfig)
    range_test: RangeTestConfig = Field(default_factory=RangeTestConfig)
    search: SearchSpace
    sampler: SamplerName = "grid"
    pruner: PrunerName = "none"
    n_trials: int | None = Field(None, ge=1, description="trials for tpe/gp/random")
    seeds: int = Field(1, ge=1, description="training runs per trial, averaged")
    race: bool = Field(False, description="grid: more seeds only for cells not yet separated")
    max_seeds: int | None = Field(None, ge=2, description="racing: the most seeds a cell gets")
    lr_scaling: LrScaling = Field(
        "range-test",
        description="max LR per batch size: own range test, a B**k fit through them (fit), "
        "or scaled from one",
    )
    storage: str | None = Field(None, description="Optuna storage URL (default: journal file)")
    workers: int = Field(1, ge=1, description="local worker processes")
    pack: PackSize = Field(
        1,
        description="grid trials a worker trains at once as one packed model (1: one at a "
        "time; 'auto': chosen by a short throughput probe on the worker's machine)",
    )
    baseline: dict[str, Any] | None = Field(
        None, description="TrainConfig fields overriding train for the baseline run"
    )
    sampler_seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _study_checks(self) -> StudyConfig:
        if self.sampler == "grid":
            if not self.search.is_grid:
                raise ValueError("sampler 'grid' needs lists, not ranges, for every search axis")
            if self.search.n_cells > MAX_GRID_CELLS:
                axes = self.search.axes().items()
                sizes = " x ".join(f"{len(v)} {k}" for k, v in axes if isinstance(v, list))
                raise ValueError(
                    f"the search grid has {self.search.n_cells} cells ({sizes}), more than "
                    f"{MAX_GRID_CELLS}; list fewer values or use sampler 'tpe' or 'random'"
                )
        elif self.n_trials is None:
            raise ValueError(f"n_trials is required for sampler {self.sampler!r}")
        if self.race and (
            self.sampler != "grid" or self.seeds < 2 or (self.max_seeds or 0) <= self.seeds
        ):
            raise ValueError(
                "race = true needs sampler 'grid', seeds >= 2 (one seed cannot measure the "
                f"seed noise) and max_seeds above seeds ({self.seeds})"
            )
        problem = pack_problem(self)
        if problem is not None:
            raise ValueError(problem)
        if self.lr_scaling == "fit" and (
            self.train.max_lr is not None or len(self.batch_sizes) < 3
        ):
            raise ValueError(
                "lr_scaling 'fit' fits max_lr = c * B**k through one range test per batch "
                f"size: it needs 3 or more batch sizes (got {self.batch_sizes}) and no "
                f"train.max_lr (got {self.train.max_lr})"
            )
        if self.baseline is not None:
            try:
                baseline = TrainConfig.model_validate({**self.train.model_dump(), **self.baseline})
            except ValidationError as error:  # named where it is: baseline.<field>
                raise ValueError("; ".join(format_validation_error(error, "baseline."))) from None
            if baseline.max_lr is None and baseline.batch_size not in self.batch_sizes:
                raise ValueError(
                    f"baseline needs a max_lr: stage 1 fixes one only at batch sizes "
                    f"{self.batch_sizes}, not at the baseline's {baseline.batch_size}"
                )
        return self

    @property
    def baseline_config(self) -> TrainConfig | None:
        """The baseline run's configuration (train with the baseline's overrides)."""
        if self.baseline is None:
            return None
        return TrainConfig.model_validate({**self.train.model_dump(), **self.baseline})

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes the study trains with, smallest first (each needs its own max LR)."""
        return sorted(self.search.batch_size) if self.search.batch_size else [self.train.batch_size]

    def space_signature(self) -> dict[str, Any]:
        """What must match for a stored study to be resumed with this file."""
        return {
            "search": self.search.model_dump(mode="json"),
            "sampler": self.sampler,
            "seeds": self.seeds,
            "lr_scaling": self.lr_scaling,
            "train": self.train.model_dump(mode="json", exclude={"threads", "device"}),
        }


def pack_problem(config: StudyConfig, pack: PackSize | None = None) -> str | None:
    """Why ``pack`` (default: the file's) cannot be used with this study; ``None`` if it can.

    Packing trains queued grid cells together, so it needs the grid sampler and no
    racing (whose rounds hand out seeds one round at a time). Pruners judge a packed
    trial after every epoch (:class:`balance.study._packing.PackedWorker`).
    """
    pack = config.pack if pack is None else pack
    try:
        pack_size(pack)
    except ValueError:
        return f"pack: {PACK_SIZE_RULE} (got {pack!r})"
    if pack != 1 and (config.sampler != "grid" or config.race):
        shown = "'auto'" if pack == "auto" else pack
        return (
            f"pack = {shown} trains queued grid cells together: it needs sampler 'grid' "
            f"and race = false (got sampler {config.sampler!r}, "
            f"race = {str(config.race).lower()})"
        )
    return None
