"""The sweep loop: train while the LR grows, record every step, put everything back."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from balance.config import ConfigError, Precision, RangeTestConfig, SweepMode, TrainConfig
from balance.loop import (
    data_device,
    evaluate_batches,
    prepare,
    split_size,
    training_epochs,
    validation_subset,
)
from balance.models import ModelFactory
from balance.objects import DataArgument, TrainingData, resolve_data
from balance.optim import build_optimizer
from balance.precision import autocast, backward_and_step, grad_scaler
from balance.range_test._diagnostics import curve_warnings, diagnose_super_convergence, is_flat
from balance.range_test._result import RangeTestError, RangeTestResult, RangeTestWarning
from balance.range_test._rules import (
    ONSET_FRACTIONS,
    choose,
    rule_curve,
    rule_spread,
    suggest_all,
    suggest_onset,
)
from balance.streaming import Batch


def sweep_lrs(start_lr: float, end_lr: float, num_steps: int, mode: SweepMode) -> list[float]:
    """Each step's LR: geometric (``exp``) or evenly spaced (``linear``), both ends included."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    last = num_steps - 1
    if mode == "exp":
        ratio = end_lr / start_lr
        return [start_lr * ratio ** (i / last) for i in range(num_steps)]
    return [start_lr + (end_lr - start_lr) * i / last for i in range(num_steps)]


def continuation(lrs: Sequence[float], extend_to: float, mode: SweepMode) -> list[float]:
    """The next stretch of a sweep at its own rate: a decade (exp) or a tenth of it (linear).

    Never past ``extend_to``; empty once the sweep has reached it.
    """
    if len(lrs) < 2:
        return []
    if mode == "exp":
        ratio = lrs[-1] / lrs[-2]
        count = math.ceil(math.log(10) / math.log(ratio))
        more = [lrs[-1] * ratio ** (i + 1) for i in range(count)]
    else:
        delta = lrs[-1] - lrs[-2]
        more = [lrs[-1] + delta * (i + 1) for i in range(max(1, len(lrs) // 10))]
    return [lr for lr in more if lr <= extend_to * (1 + 1e-9)]


def turned(lrs: Sequence[float], losses: Sequence[float], config: RangeTestConfig) -> bool:
    """Whether the loss, smoothed without lag, has risen past its minimum (``suggest_onset``)."""
    smoothed = rule_curve(losses, config.smooth_beta, config.skip_start)
    return (
        suggest_onset(lrs, smoothed, skip_start=config.skip_start, rise=config.onset_rise)
        is not None
    )


def _full_batches(epoch: Callable[[], Iterator[Batch]], batch_size: int) -> Iterator[Batch]:
    # Endless shuffled epochs; a short last batch is dropped so every step's loss
    # has the same noise level.
    while True:
        for xb, yb in epoch():
            if len(xb) == batch_size:
                yield xb, yb


@dataclass
class _Saved:
    model_state: dict[str, Tensor]
    grads: list[Tensor | None]
    modes: list[bool]
    optimizer_state: dict[str, Any]
    cpu_rng: Tensor
    cuda_rng: list[Tensor] | None


def _save(model: nn.Module, optimizer: torch.optim.Optimizer) -> _Saved:
    return _Saved(
        model_state={key: value.detach().clone() for key, value in model.state_dict().items()},
        grads=[None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        modes=[module.training for module in model.modules()],
        optimizer_state=copy.deepcopy(optimizer.state_dict()),
        cpu_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    )


def _restore(saved: _Saved, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.load_state_dict(saved.model_state)  # copies in place: the optimizer keeps its params
    for parameter, grad in zip(model.parameters(), saved.grads, strict=True):
        parameter.grad = grad
    for module, training in zip(model.modules(), saved.modes, strict=True):
        module.training = training
    optimizer.load_state_dict(saved.optimizer_state)
    torch.set_rng_state(saved.cpu_rng)
    if saved.cuda_rng is not None:
        torch.cuda.set_rng_state_all(saved.cuda_rng)


@dataclass
class _Sweep:
    """The raw record of one sweep (or the step-by-step mean of several)."""

    lrs: list[float]
    losses: list[float]
    val_steps: list[int]
    val_losses: list[float]
    val_accuracies: list[float]
    diverged_at: int | None


def _sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    *,
    batch_size: int,
    config: RangeTestConfig,
    generator: torch.Generator | None,
    augment: bool,
    precision: Precision,
) -> _Sweep:
    """Train through the LR schedule, recording each step; restore everything afterwards."""
    schedule = sweep_lrs(config.start_lr, config.end_lr, config.num_steps, config.mode)
    record = _Sweep([], [], [], [], [], None)
    saved = _save(model, optimizer)
    try:
        device = data_device(data)
        if generator is None:
            seed = int(torch.randint(2**62, ()).item())
            generator = torch.Generator(device=device).manual_seed(seed)
        epoch = training_epochs(data, batch_size, generator, augment=augment)
        batches = _full_batches(epoch, batch_size)
        val_batches = validation_subset(data, config.val_size)
        criterion = nn.CrossEntropyLoss()
        cast = autocast(precision, device)
        scaler = grad_scaler(precision, device)  # a new scale for every sweep
        beta, average, best = config.ema_beta, 0.0, math.inf
        model.train()
        step = 0
        while step < len(schedule):
            lr = schedule[step]
            for group in optimizer.param_groups:
                group["lr"] = lr
            xb, yb = next(batches)
            with cast:
                loss = criterion(model(xb), yb)  # fp32: autocast runs cross-entropy in fp32
            optimizer.zero_grad(set_to_none=True)
            backward_and_step(loss, optimizer, scaler)
            value = loss.item()  # one host sync per step: the stop rule needs the value
            record.lrs.append(lr)
            record.losses.append(value)
            if not math.isfinite(value):
                record.diverged_at = step
                break
            average = beta * average + (1 - beta) * value
            current = average / (1 - beta ** (step + 1))  # bias correction, as smooth()
            best = min(best, current)
            if config.val_every > 0 and (step + 1) % config.val_every == 0:
                val = val_batches()
                val_loss, val_accuracy = evaluate_batches(model, val, device, precision=precision)
                record.val_steps.append(step)
                record.val_losses.append(val_loss)
                record.val_accuracies.append(val_accuracy)
            if current > config.diverge_threshold * best:
                record.diverged_at = step
                break
            step += 1
            if step == len(schedule) and not turned(record.lrs, record.losses, config):
                # Still falling at the last LR: go on at the same rate, a stretch at a time.
                schedule.extend(continuation(schedule, config.extend_to, config.mode))
    finally:
        _restore(saved, model, optimizer)
    return record


def _mean_sweep(sweeps: Sequence[_Sweep]) -> _Sweep:
    """Step-by-step means of sweeps over the same schedule, up to where the first one stopped."""
    if len(sweeps) == 1:
        return sweeps[0]
    length = min(len(sweep.losses) for sweep in sweeps)
    stopped = any(sweep.diverged_at == length - 1 for sweep in sweeps)
    val_count = min(sum(step < length for step in sweep.val_steps) for sweep in sweeps)

    def mean(name: str, count: int) -> list[float]:
        return np.mean([getattr(sweep, name)[:count] for sweep in sweeps], axis=0).tolist()

    return _Sweep(
        lrs=sweeps[0].lrs[:length],
        losses=mean("losses", length),
        val_steps=sweeps[0].val_steps[:val_count],
        val_losses=mean("val_losses", val_count),
        val_accuracies=mean("val_accuracies", val_count),
        diverged_at=length - 1 if stopped else None,
    )


def optimizer_family(optimizer: torch.optim.Optimizer | str) -> str:
    """``"sgd"`` for SGD, ``"adam"`` for Adam, AdamW and other adaptive optimizers."""
    if isinstance(optimizer, str):
        return "sgd" if optimizer == "sgd" else "adam"
    return "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"


def _result(
    sweep: _Sweep,
    config: RangeTestConfig,
    *,
    batch_size: int,
    div_factor: float,
    repeats: int,
    family: str,
) -> RangeTestResult:
    """Smooth the curve, ask every rule, choose ``max_lr``, diagnose and warn."""
    smoothed = rule_curve(sweep.losses, config.smooth_beta, config.skip_start)
    stopped_at = None if sweep.diverged_at is None else sweep.lrs[sweep.diverged_at]
    turn_lr = suggest_onset(
        sweep.lrs, smoothed, skip_start=config.skip_start, rise=config.onset_rise
    )
    if stopped_at is None and turn_lr is None:
        raise RangeTestError(
            f"the loss was still falling at LR {sweep.lrs[-1]:.3g}, where the sweep ended "
            f"(end_lr x 10**extend_decades={config.extend_decades:g}): a curve that never "
            "turned names no max LR; check that the model learns, raise end_lr or "
            "extend_decades, or give max_lr"
        )
    val_lrs = [sweep.lrs[step] for step in sweep.val_steps]
    onset_fraction = (
        ONSET_FRACTIONS[family] if config.onset_fraction is None else config.onset_fraction
    )
    suggestions = suggest_all(
        sweep.lrs,
        smoothed,
        val_lrs,
        sweep.val_accuracies,
        skip_start=config.skip_start,
        mode=config.mode,
        tolerance=config.accuracy_tolerance,
        minimum_fraction=config.minimum_fraction,
        onset_rise=config.onset_rise,
        onset_fraction=onset_fraction,
        stopped_at=stopped_at,
    )
    found = curve_warnings(
        sweep.lrs,
        smoothed,
        num_steps=config.num_steps,
        diverged_at=sweep.diverged_at,
        skip_start=config.skip_start,
    )
    if len(sweep.lrs) > config.num_steps:
        found.append(
            f"loss still falling at end_lr={config.end_lr:g}: the sweep went on to LR "
            f"{sweep.lrs[-1]:.3g}"
        )
    rule, max_lr = choose(
        suggestions,
        config.rule,
        config.start_lr,
        found,
        distrust=is_flat(sweep.lrs, smoothed, config.skip_start),
    )
    diagnostic = diagnose_super_convergence(
        sweep.lrs,
        smoothed,
        stopped_at if turn_lr is None else turn_lr,
        val_lrs,
        sweep.val_accuracies,
        skip_start=config.skip_start,
        tolerance=config.accuracy_tolerance,
    )
    for message in found:
        warnings.warn(message, RangeTestWarning, stacklevel=3)
    return RangeTestResult(
        lrs=sweep.lrs,
        losses=sweep.losses,
        smoothed=smoothed,
        val_steps=sweep.val_steps,
        val_lrs=val_lrs,
        val_losses=sweep.val_losses,
        val_accuracies=sweep.val_accuracies,
        diverged_at=sweep.diverged_at,
        suggestions=suggestions,
        rule=rule,
        max_lr=max_lr,
        min_lr=max_lr / div_factor,
        batch_size=batch_size,
        diagnostic=diagnostic,
        warnings=found,
        repeats=repeats,
        rule_spread=rule_spread(suggestions),
    )


def _check_sizes(data: TrainingData, batch_size: int, div_factor: float) -> None:
    if not 1 <= batch_size <= split_size(data, "train"):
        raise ConfigError(
            f"batch_size: must be between 1 and the training split size "
            f"({split_size(data, 'train')}), got {batch_size}"
        )
    if not div_factor > 1:  # nan too
        raise ConfigError(f"div_factor: must be > 1, got {div_factor}")


def range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DataArgument,
    *,
    batch_size: int,
    config: RangeTestConfig | None = None,
    div_factor: float = 25.0,
    generator: torch.Generator | None = None,
    augment: bool = False,
    precision: Precision = "32",
) -> RangeTestResult:
    """Sweep the LR over ``config.num_steps`` training steps of this model and suggest ``max_lr``.

    One sweep of the model as it stands (``config.repeats`` is for
    :func:`find_max_lr`, which builds fresh models). Stops early, without
    raising, when the smoothed loss exceeds ``diverge_threshold`` times its best
    or a loss is not finite. Every parameter group gets the same swept LR.
    Everything the test touches is restored afterwards (see the module docstring).

    Args:
        model: the network (any ``nn.Module``); ``data`` is moved to its device.
        optimizer: its optimizer; momentum/beta1 stay as set.
        data: a :class:`~balance.data.Dataset`, ``(x_train, y_train, x_test, y_test)``
            tensors (split as ``TrainConfig()`` would) or a
            :class:`~balance.streaming.StreamingData`; batches come from its training
            split, validation from its validation split.
        batch_size: examples per step (the LR to suggest depends on it).
        config: sweep, smoothing, stop and rule settings (default ``RangeTestConfig()``).
        div_factor: ``min_lr = max_lr / div_factor`` (the 1cycle start LR).
        generator: shuffles the batches; by default one seeded from torch's global
            RNG (whose state is restored afterwards).
        augment: augment image batches as training would.
        precision: ``"32"``, or autocast forward and loss (:mod:`balance.precision`).

    Returns:
        The curves, every rule's suggestion, the chosen ``max_lr`` and ``min_lr``,
        the super-convergence diagnostic and any warnings (also issued as
        :class:`RangeTestWarning`).
    """
    config = RangeTestConfig() if config is None else config
    device = next(model.parameters(), torch.empty(0)).device
    prepared = resolve_data(data, TrainConfig()).to(device)
    _check_sizes(prepared, batch_size, div_factor)
    sweep = _sweep(
        model,
        optimizer,
        prepared,
        batch_size=batch_size,
        config=config,
        generator=generator,
        augment=augment,
        precision=precision,
    )
    return _result(
        sweep,
        config,
        batch_size=batch_size,
        div_factor=div_factor,
        repeats=1,
        family=optimizer_family(optimizer),
    )


def find_max_lr(
    train_config: TrainConfig,
    range_config: RangeTestConfig | None = None,
    *,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
) -> RangeTestResult:
    """Run the range test on the model, optimizer and batches ``train_config`` would train.

    Data, device, seed and model come from :func:`balance.train.prepare`, the
    optimizer (weight decay, momentum fixed at ``train_config.momentum``, or
    beta1 for Adam) from :func:`balance.optim.build_optimizer`; batches are
    shuffled with the seed and augmented when training would be. With
    ``range_config.repeats`` = k, k sweeps run from fresh models seeded
    ``seed``, ``seed + 1``, ...; their losses (and validation measurements) are
    averaged step by step before smoothing, so one unlucky initialization or
    batch order moves the suggestion less. ``min_lr`` uses
    ``train_config.div_factor``. ``data`` and ``model``: Python objects in place of
    ``train_config.data`` and ``.model``, as for :func:`balance.train.train`.
    """
    range_config = RangeTestConfig() if range_config is None else range_config
    sweeps = []
    for offset in range(range_config.repeats):
        run = train_config.model_copy(update={"seed": train_config.seed + offset})
        prepared, network, device = prepare(run, data, model)
        data = prepared  # split once, for every repeat
        _check_sizes(prepared, run.batch_size, run.div_factor)
        optimizer = build_optimizer(network, run, range_config.start_lr)
        sweeps.append(
            _sweep(
                network,
                optimizer,
                prepared,
                batch_size=run.batch_size,
                config=range_config,
                generator=torch.Generator(device=device).manual_seed(run.seed),
                augment=run.augment,
                precision=run.precision,
            )
        )
    return _result(
        _mean_sweep(sweeps),
        range_config,
        batch_size=train_config.batch_size,
        div_factor=train_config.div_factor,
        repeats=range_config.repeats,
        family=optimizer_family(train_config.optimizer),
    )
