"""The LR range test, its suggestion rules and the super-convergence diagnostic.

The test trains for ``num_steps`` optimizer steps while the learning rate sweeps
from ``start_lr`` to ``end_lr`` (geometric or even steps), records the loss of
every step and, every ``val_every`` steps, the validation loss and accuracy on a
fixed subset (Smith's accuracy-vs-LR curve). It owns the LR while it runs: every
parameter group's ``lr`` is set directly each step and no scheduler is stepped.
Momentum (SGD) or beta1 (Adam) stays at whatever the optimizer holds.
Afterwards the model (weights, buffers, gradients, train/eval modes), the
optimizer (state and param groups) and torch's CPU and CUDA RNG states are put
back exactly as they were, even when the test raises.

Suggestion rules are pure functions of plain lists, so they can be tested and
re-run alone; :data:`SUGGESTION_RULES` names them all.

Example:
    >>> from balance.config import RangeTestConfig, TrainConfig
    >>> config = TrainConfig(data="digits", model="mlp", batch_size=32, threads=1)
    >>> result = find_max_lr(config, RangeTestConfig(num_steps=60, val_every=10))
    >>> sorted(result.suggestions)
    ['accuracy', 'minimum', 'steepest', 'valley']
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from balance.config import ConfigError, RangeTestConfig, SweepMode, TrainConfig
from balance.data import Dataset, epoch_batches
from balance.optim import build_optimizer
from balance.train import evaluate, prepare

MIN_POINTS = 3
"""Every rule needs at least this many finite points to answer."""

TRUSTED_POINTS = 10
"""Fewer usable points than this earns a "too few points" warning."""

EARLY_DIVERGENCE = 0.1
"""Divergence within this share of the sweep earns a warning (start_lr too high)."""

FLAT_DROP = 0.05
"""A smoothed loss that falls by less than this share of its start is "flat"."""

SUPER_CONVERGENCE_FACTOR = 3.0
"""Accuracy must hold its peak up to this multiple of the steepest-descent LR."""

DEFAULT_ACCURACY_TOLERANCE: float = RangeTestConfig.model_fields["accuracy_tolerance"].default
"""Absolute accuracy below the peak that still counts as its plateau."""

DEFAULT_MINIMUM_FRACTION: float = RangeTestConfig.model_fields["minimum_fraction"].default
"""Share of the loss-minimum LR the ``minimum`` rule suggests."""

FALLBACK_ORDER = ("minimum", "steepest", "accuracy", "valley")
"""Rules tried, in this order, when the chosen rule cannot answer (best measured first)."""


class RangeTestWarning(UserWarning):
    """A range-test curve that its suggestions should not be trusted on."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SuperConvergence:
    """Whether validation accuracy holds its peak far past the steepest-descent LR.

    ``verdict`` is ``"likely"``, ``"unlikely"`` or ``"unknown"`` (no validation
    accuracy was measured, or the loss never descended).
    """

    verdict: str
    peak_accuracy: float | None
    peak_lr: float | None
    plateau_end_lr: float | None
    steepest_lr: float | None
    ratio: float | None
    explanation: str


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

    def to_dict(self) -> dict[str, Any]:
        """A dict that strict JSON accepts: non-finite floats become ``None``."""
        return _json_safe(asdict(self))

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
        values["diagnostic"] = SuperConvergence(**values["diagnostic"])
        return cls(**values)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


# --------------------------------------------------------------------------- rules


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average, as the range test smooths its losses.

    ``avg = beta * avg + (1 - beta) * loss`` and ``smoothed = avg / (1 - beta**t)``
    after ``t`` finite losses, so early values are not dragged towards zero. A
    non-finite loss gives NaN and leaves the average untouched.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    out, average, count = [], 0.0, 0
    for loss in losses:
        if not math.isfinite(loss):
            out.append(math.nan)
            continue
        count += 1
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**count))
    return out


def _usable(
    lrs: Sequence[float], values: Sequence[float], skip_start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The points after the first ``skip_start``, without non-finite LRs or values."""
    if len(lrs) != len(values):
        raise ValueError(
            f"lrs and values must have the same length, got {len(lrs)} and {len(values)}"
        )
    if skip_start < 0:
        raise ValueError(f"skip_start must be >= 0, got {skip_start}")
    x = np.asarray(lrs[skip_start:], dtype=float)
    y = np.asarray(values[skip_start:], dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def suggest_steepest(
    lrs: Sequence[float], smoothed: Sequence[float], *, skip_start: int = 0, mode: SweepMode = "exp"
) -> float | None:
    """The LR where the smoothed loss falls fastest on its way down to its minimum.

    The slope is taken against log(LR) for an exponential sweep (so every decade
    weighs the same) and against the LR itself for a linear one. Only points up
    to the minimum count: past it, a noisy recovery between spikes can look
    steeper than the real descent. ``None`` when fewer than 3 finite points
    remain or the loss never falls.
    """
    x, y = _usable(lrs, smoothed, skip_start)
    lowest = int(np.argmin(y)) if len(y) else 0
    x, y = x[: lowest + 1], y[: lowest + 1]
    if len(x) < MIN_POINTS:
        return None
    position = np.log(x) if mode == "exp" else x
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.gradient(y, position)
    slopes[~np.isfinite(slopes)] = np.inf
    index = int(np.argmin(slopes))
    return float(x[index]) if slopes[index] < 0 else None


def suggest_valley(
    lrs: Sequence[float], smoothed: Sequence[float], *, skip_start: int = 0
) -> float | None:
    """fastai's "valley": halfway (by step) along the longest decreasing stretch.

    The stretch is the longest strictly decreasing subsequence of the smoothed
    loss (not necessarily contiguous, so noise does not cut it). Like fastai's
    ``valley`` (``start + int(len/3) + int(len/6)``), the answer sits about
    halfway from its start to its end. ``None`` when fewer than 3 finite points
    remain or the loss never falls.
    """
    x, y = _usable(lrs, smoothed, skip_start)
    n = len(x)
    if n < MIN_POINTS:
        return None
    length = [1] * n  # longest decreasing subsequence ending at i ...
    first = list(range(n))  # ... and where it starts
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j] and length[j] + 1 > length[i]:
                length[i], first[i] = length[j] + 1, first[j]
    end = max(range(n), key=lambda i: (length[i], -i))  # longest; the earliest of equals
    if length[end] < 2:
        return None
    start = first[end]
    sections = (end - start) / 3
    return float(x[start + int(sections) + int(sections / 2)])


def suggest_minimum(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    *,
    skip_start: int = 0,
    fraction: float = DEFAULT_MINIMUM_FRACTION,
) -> float | None:
    """``fraction`` of the LR at the smoothed loss's minimum.

    The minimum is the largest LR at which the loss still went down; backing off
    from it leaves room for 1cycle's peak. fastai's "minimum" is ``fraction=0.1``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    x, y = _usable(lrs, smoothed, skip_start)
    if len(x) < MIN_POINTS:
        return None
    return float(x[int(np.argmin(y))] * fraction)


def _plateau(
    val_lrs: Sequence[float], val_accuracies: Sequence[float], tolerance: float
) -> tuple[float, float, float] | None:
    """``(peak accuracy, peak LR, last LR of the plateau after the peak)``."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    x, acc = _usable(val_lrs, val_accuracies)
    if len(x) < MIN_POINTS:
        return None
    peak = int(np.argmax(acc))
    end = peak
    while end + 1 < len(acc) and acc[end + 1] >= acc[peak] - tolerance:
        end += 1
    return float(acc[peak]), float(x[peak]), float(x[end])


def suggest_accuracy(
    val_lrs: Sequence[float],
    val_accuracies: Sequence[float],
    *,
    tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
) -> float | None:
    """The largest LR before validation accuracy first falls below ``peak - tolerance``.

    This is the end of the plateau of Smith's accuracy-vs-LR curve: walking up
    from the LR of peak accuracy, the last measured LR that is still within
    ``tolerance`` (absolute, e.g. 0.02 = two points) of the peak. ``None`` with
    fewer than 3 finite measurements.
    """
    plateau = _plateau(val_lrs, val_accuracies, tolerance)
    return None if plateau is None else plateau[2]


SuggestionRuleFunction = Callable[..., float | None]

SUGGESTION_RULES: dict[str, SuggestionRuleFunction] = {
    "steepest": suggest_steepest,
    "valley": suggest_valley,
    "minimum": suggest_minimum,
    "accuracy": suggest_accuracy,
}
"""Rule name -> rule. The loss rules take ``(lrs, smoothed, *, skip_start)``;
``accuracy`` takes ``(val_lrs, val_accuracies, *, tolerance)``."""

LOSS_RULES = ("steepest", "valley", "minimum")


def suggest_all(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    val_lrs: Sequence[float],
    val_accuracies: Sequence[float],
    *,
    skip_start: int = 0,
    mode: SweepMode = "exp",
    tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
    minimum_fraction: float = DEFAULT_MINIMUM_FRACTION,
) -> dict[str, float | None]:
    """Every rule's LR, ``None`` where a rule cannot answer."""
    return {
        "steepest": suggest_steepest(lrs, smoothed, skip_start=skip_start, mode=mode),
        "valley": suggest_valley(lrs, smoothed, skip_start=skip_start),
        "minimum": suggest_minimum(lrs, smoothed, skip_start=skip_start, fraction=minimum_fraction),
        "accuracy": suggest_accuracy(val_lrs, val_accuracies, tolerance=tolerance),
    }


# --------------------------------------------------------------------------- diagnostics


def diagnose_super_convergence(
    val_lrs: Sequence[float],
    val_accuracies: Sequence[float],
    steepest_lr: float | None,
    *,
    tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
    factor: float = SUPER_CONVERGENCE_FACTOR,
) -> SuperConvergence:
    """Smith's sign of super-convergence: accuracy stays high far past the steepest descent.

    ``likely`` when validation accuracy stays within ``tolerance`` of its peak up
    to an LR at least ``factor`` times ``steepest_lr``; ``unknown`` without
    accuracy measurements or a steepest-descent LR.
    """
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    plateau = _plateau(val_lrs, val_accuracies, tolerance)
    if plateau is None:
        return SuperConvergence(
            "unknown",
            None,
            None,
            None,
            steepest_lr,
            None,
            f"Super-convergence is unknown: fewer than {MIN_POINTS} validation accuracies were "
            "measured (set val_every > 0).",
        )
    peak_accuracy, peak_lr, end_lr = plateau
    if steepest_lr is None or steepest_lr <= 0:
        return SuperConvergence(
            "unknown",
            peak_accuracy,
            peak_lr,
            end_lr,
            None,
            None,
            "Super-convergence is unknown: the smoothed loss never descended, so there is no "
            "steepest-descent LR to compare with.",
        )
    ratio = end_lr / steepest_lr
    verdict = "likely" if ratio >= factor else "unlikely"
    explanation = (
        f"Super-convergence is {verdict}: validation accuracy stays within {tolerance:g} of its "
        f"peak {peak_accuracy:.3f} (at LR {peak_lr:.3g}) up to LR {end_lr:.3g}, {ratio:.1f}x the "
        f"steepest-descent LR {steepest_lr:.3g} ({factor:g}x needed)."
    )
    return SuperConvergence(
        verdict, peak_accuracy, peak_lr, end_lr, steepest_lr, ratio, explanation
    )


def curve_warnings(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    *,
    num_steps: int,
    diverged_at: int | None,
    skip_start: int = 0,
) -> list[str]:
    """Plain-words reasons not to trust a curve: too short, early divergence, flat, unfinished."""
    found = []
    x, y = _usable(lrs, smoothed, skip_start)
    if len(x) < TRUSTED_POINTS:
        found.append(
            f"too few points: {len(x)} usable after skip_start={skip_start} "
            f"(want {TRUSTED_POINTS}+); raise num_steps or lower start_lr"
        )
    if diverged_at is not None and diverged_at < EARLY_DIVERGENCE * num_steps:
        found.append(
            f"diverged in the first {EARLY_DIVERGENCE:.0%} of the sweep (step {diverged_at} "
            f"of {num_steps}, LR {lrs[diverged_at]:.3g}); lower start_lr"
        )
    if len(x) >= MIN_POINTS:
        drop = (y[0] - y.min()) / abs(y[0]) if y[0] != 0 else 0.0
        if drop < FLAT_DROP:
            found.append(
                f"curve is flat: the smoothed loss falls only {max(drop, 0.0):.1%} "
                f"(from {y[0]:.4g} to {y.min():.4g}); widen the LR range or check that the "
                "model learns"
            )
        elif diverged_at is None and int(np.argmin(y)) >= len(y) - max(2, len(y) // 20):
            found.append(f"loss still falling at the last LR {x[-1]:.3g}; raise end_lr")
    return found


# --------------------------------------------------------------------------- the test


def sweep_lrs(start_lr: float, end_lr: float, num_steps: int, mode: SweepMode) -> list[float]:
    """Each step's LR: geometric (``exp``) or evenly spaced (``linear``), both ends included."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    last = num_steps - 1
    if mode == "exp":
        ratio = end_lr / start_lr
        return [start_lr * ratio ** (i / last) for i in range(num_steps)]
    return [start_lr + (end_lr - start_lr) * i / last for i in range(num_steps)]


def _full_batches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator, augment: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    # Endless shuffled epochs; a short last batch is dropped so every step's loss
    # has the same noise level.
    while True:
        for xb, yb in epoch_batches(x, y, batch_size, generator, augment=augment):
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


def _validation_subset(data: Dataset, size: int) -> tuple[Tensor, Tensor]:
    # The same examples every time: a fixed seed, independent of the shuffling generator.
    order = torch.randperm(len(data.x_val), generator=torch.Generator().manual_seed(0))
    index = order[: min(size, len(data.x_val))].to(data.x_val.device)
    return data.x_val[index], data.y_val[index]


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
    data: Dataset,
    *,
    batch_size: int,
    config: RangeTestConfig,
    generator: torch.Generator | None,
    augment: bool,
) -> _Sweep:
    """Train through the LR schedule, recording each step; restore everything afterwards."""
    schedule = sweep_lrs(config.start_lr, config.end_lr, config.num_steps, config.mode)
    record = _Sweep([], [], [], [], [], None)
    saved = _save(model, optimizer)
    try:
        if generator is None:
            seed = int(torch.randint(2**62, ()).item())
            generator = torch.Generator(device=data.x_train.device).manual_seed(seed)
        batches = _full_batches(data.x_train, data.y_train, batch_size, generator, augment)
        x_val, y_val = _validation_subset(data, config.val_size)
        criterion = nn.CrossEntropyLoss()
        beta, average, best = config.ema_beta, 0.0, math.inf
        model.train()
        for step, lr in enumerate(schedule):
            for group in optimizer.param_groups:
                group["lr"] = lr
            xb, yb = next(batches)
            loss = criterion(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()  # one host sync per step: the stop rule needs the value
            record.lrs.append(lr)
            record.losses.append(value)
            if not math.isfinite(value):
                record.diverged_at = step
                break
            average = beta * average + (1 - beta) * value
            current = average / (1 - beta ** (step + 1))  # bias correction, as smooth()
            best = min(best, current)
            if config.val_every and (step + 1) % config.val_every == 0:
                val_loss, val_accuracy = evaluate(model, x_val, y_val)
                record.val_steps.append(step)
                record.val_losses.append(val_loss)
                record.val_accuracies.append(val_accuracy)
            if current > config.diverge_threshold * best:
                record.diverged_at = step
                break
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


def _result(
    sweep: _Sweep, config: RangeTestConfig, *, batch_size: int, div_factor: float, repeats: int
) -> RangeTestResult:
    """Smooth the curve, ask every rule, choose ``max_lr``, diagnose and warn."""
    smoothed = smooth(sweep.losses, config.ema_beta)
    val_lrs = [sweep.lrs[step] for step in sweep.val_steps]
    suggestions = suggest_all(
        sweep.lrs,
        smoothed,
        val_lrs,
        sweep.val_accuracies,
        skip_start=config.skip_start,
        mode=config.mode,
        tolerance=config.accuracy_tolerance,
        minimum_fraction=config.minimum_fraction,
    )
    found = curve_warnings(
        sweep.lrs,
        smoothed,
        num_steps=config.num_steps,
        diverged_at=sweep.diverged_at,
        skip_start=config.skip_start,
    )
    rule, max_lr = _choose(suggestions, config.rule, config.start_lr, found)
    diagnostic = diagnose_super_convergence(
        val_lrs, sweep.val_accuracies, suggestions["steepest"], tolerance=config.accuracy_tolerance
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
    )


def _check_sizes(data: Dataset, batch_size: int, div_factor: float) -> None:
    if not 1 <= batch_size <= len(data.x_train):
        raise ConfigError(
            f"batch_size: must be between 1 and the training split size "
            f"({len(data.x_train)}), got {batch_size}"
        )
    if div_factor <= 1:
        raise ConfigError(f"div_factor: must be > 1, got {div_factor}")


def range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    *,
    batch_size: int,
    config: RangeTestConfig | None = None,
    div_factor: float = 25.0,
    generator: torch.Generator | None = None,
    augment: bool = False,
) -> RangeTestResult:
    """Sweep the LR over ``config.num_steps`` training steps of this model and suggest ``max_lr``.

    One sweep of the model as it stands (``config.repeats`` is for
    :func:`find_max_lr`, which builds fresh models). Stops early, without
    raising, when the smoothed loss exceeds ``diverge_threshold`` times its best
    or a loss is not finite. Every parameter group gets the same swept LR.
    Everything the test touches is restored afterwards (see the module docstring).

    Args:
        model: the network, on the same device as ``data``.
        optimizer: its optimizer; momentum/beta1 stay as set.
        data: the data set; batches come from ``x_train``, validation from ``x_val``.
        batch_size: examples per step (the LR to suggest depends on it).
        config: sweep, smoothing, stop and rule settings (default ``RangeTestConfig()``).
        div_factor: ``min_lr = max_lr / div_factor`` (the 1cycle start LR).
        generator: shuffles the batches; by default one seeded from torch's global
            RNG (whose state is restored afterwards).
        augment: augment image batches as training would.

    Returns:
        The curves, every rule's suggestion, the chosen ``max_lr`` and ``min_lr``,
        the super-convergence diagnostic and any warnings (also issued as
        :class:`RangeTestWarning`).
    """
    config = RangeTestConfig() if config is None else config
    _check_sizes(data, batch_size, div_factor)
    sweep = _sweep(
        model,
        optimizer,
        data,
        batch_size=batch_size,
        config=config,
        generator=generator,
        augment=augment,
    )
    return _result(sweep, config, batch_size=batch_size, div_factor=div_factor, repeats=1)


def _choose(
    suggestions: dict[str, float | None], rule: str, start_lr: float, found: list[str]
) -> tuple[str, float]:
    """The configured rule's LR, else the first rule in FALLBACK_ORDER that answered."""
    chosen = suggestions.get(rule)
    if chosen is not None:
        return rule, chosen
    for other in FALLBACK_ORDER:
        value = suggestions.get(other)
        if value is not None:
            found.append(f"rule {rule!r} could not suggest an LR; used {other!r} instead")
            return other, value
    found.append(f"no rule could suggest an LR; max_lr falls back to start_lr={start_lr:g}")
    return "start_lr", start_lr


def find_max_lr(
    train_config: TrainConfig,
    range_config: RangeTestConfig | None = None,
    *,
    data: Dataset | None = None,
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
    ``train_config.div_factor``.
    """
    range_config = RangeTestConfig() if range_config is None else range_config
    sweeps = []
    for offset in range(range_config.repeats):
        run = train_config.model_copy(update={"seed": train_config.seed + offset})
        data, model, device = prepare(run, data)
        _check_sizes(data, run.batch_size, run.div_factor)
        optimizer = build_optimizer(model, run, range_config.start_lr)
        sweeps.append(
            _sweep(
                model,
                optimizer,
                data,
                batch_size=run.batch_size,
                config=range_config,
                generator=torch.Generator(device=device).manual_seed(run.seed),
                augment=run.augment,
            )
        )
    return _result(
        _mean_sweep(sweeps),
        range_config,
        batch_size=train_config.batch_size,
        div_factor=train_config.div_factor,
        repeats=range_config.repeats,
    )
