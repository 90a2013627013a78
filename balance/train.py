"""One training run: a :class:`~balance.config.TrainConfig` in, a :class:`TrainResult` out.

With no ``max_lr`` the LR range test runs first and its answer is the peak LR, in
the Python API as on the command line.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from balance.config import RangeTestConfig, TrainConfig
from balance.loop import (
    Divergence,
    EpochCallback,
    EpochMetrics,
    correct_batches,
    data_device,
    evaluate_batches,
    fit,
    prepare,
    split_batches,
    split_size,
)
from balance.models import ModelFactory
from balance.objects import DataArgument, TrainingData
from balance.optim import build_optimizer
from balance.range_test import Probe, RangeTestResult, RangeTestWarning, find_max_lr
from balance.runs import pack_correct
from balance.schedule import build_scheduler


@dataclass
class TrainResult:
    """Curves and figures of one training run."""

    max_lr: float
    batch_size: int
    epochs: list[EpochMetrics]
    lr_trace: list[float]
    momentum_trace: list[float]
    wall_time: float
    train_time: float
    samples_per_second: float
    diverged: Divergence | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    range_test: RangeTestResult | None = None  # the test that chose max_lr, when one ran
    val_correct: str | None = None  # final validation correctness, packed (runs.pack_correct)
    val_examples: int | None = None
    test_correct: str | None = None  # the same on test, when the test split was measured
    test_examples: int | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return len(self.lr_trace)

    @property
    def final(self) -> EpochMetrics | None:
        """Metrics of the last completed epoch, if any."""
        return self.epochs[-1] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the model is left out)."""
        # asdict deep-copies every field: leave the model out before, not after.
        out = asdict(replace(self, model=None))
        out.pop("model")
        out["steps"] = self.steps
        if self.range_test is not None:
            out["range_test"] = self.range_test.to_dict()
        return out


def train(
    config: TrainConfig,
    *,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
    callback: EpochCallback | None = None,
    evaluate_test: bool = False,
    track_test: bool = False,
    range_config: RangeTestConfig | None = None,
) -> TrainResult:
    """Train the configured model under the configured schedule and return its curves.

    ``config.max_lr`` of ``None`` chooses it first (:func:`choose_max_lr` with
    ``range_config``, default ``RangeTestConfig()``: the range test, then its
    probes) and trains at its ``max_lr``; the test is in the result's ``range_test``.
    The run is deterministic for a given seed, device and thread count.
    ``evaluate_test`` measures the test split once at the end; ``track_test``
    after every epoch (for plots of the final comparison only).
    ``data`` and ``model`` are Python objects standing in for ``config.data`` and
    ``config.model`` (:mod:`balance.objects`): a :class:`~balance.data.Dataset`,
    ``(x_train, y_train, x_test, y_test)`` tensors or a
    :class:`~balance.streaming.StreamingData`; a factory
    ``(input_shape, num_classes, dropout) -> nn.Module``.

    Example:
        >>> from balance import TrainConfig, train
        >>> result = train(TrainConfig(data="digits", model="mlp", max_lr=0.1, epochs=2))
        >>> result.final.val_accuracy > 0.5
        True
    """
    found, max_lr = None, config.max_lr
    if max_lr is None:
        found = choose_max_lr(config, range_config, data=data, model=model)
        max_lr = found.max_lr
        config = config.model_copy(update={"max_lr": max_lr})
    started = time.perf_counter()
    data, network, device = prepare(config, data, model)
    optimizer = build_optimizer(network, config, max_lr)
    n_train = split_size(data, "train")
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    scheduler = build_scheduler(optimizer, config, config.epochs * steps_per_epoch, max_lr)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history, lrs, momenta, train_time, diverged = fit(
        network,
        optimizer,
        scheduler,
        data,
        epochs=config.epochs,
        batch_size=config.batch_size,
        generator=generator,
        augment=config.augment,
        callback=callback,
        track_test=track_test,
        precision=config.precision,
    )
    return finish_run(
        config,
        network,
        data,
        history=history,
        lrs=lrs,
        momenta=momenta,
        train_time=train_time,
        diverged=diverged,
        started=started,
        measure_test=evaluate_test or track_test,
        range_test=found,
    )


def finish_run(
    config: TrainConfig,
    network: nn.Module,
    data: TrainingData,
    *,
    history: list[EpochMetrics],
    lrs: list[float],
    momenta: list[float],
    train_time: float,
    diverged: Divergence | None,
    started: float,
    measure_test: bool,
    range_test: RangeTestResult | None = None,
) -> TrainResult:
    """A trained run's :class:`TrainResult`: per-example correctness on validation (and
    test, with ``measure_test``) measured on ``network``; one run or a packed member."""
    device, precision = data_device(data), config.precision
    val_correct, val_examples = None, None
    if diverged is None and history:  # compared on the same examples across cells and seeds
        hits = correct_batches(network, split_batches(data, "val"), device, precision=precision)
        val_correct = pack_correct(hits.numpy())
        val_examples = len(hits)
    test_loss = test_accuracy = None
    test_correct, test_examples = None, None
    if measure_test and diverged is None:
        test = split_batches(data, "test")
        test_loss, test_accuracy = evaluate_batches(network, test, device, precision=precision)
        hits = correct_batches(network, split_batches(data, "test"), device, precision=precision)
        test_correct = pack_correct(hits.numpy())
        test_examples = len(hits)
    n_train = split_size(data, "train")
    samples = n_train * math.ceil(len(lrs) / math.ceil(n_train / config.batch_size))
    return TrainResult(
        max_lr=float(config.max_lr or 0.0),
        batch_size=config.batch_size,
        epochs=history,
        lr_trace=lrs,
        momentum_trace=momenta,
        wall_time=time.perf_counter() - started,
        train_time=train_time,
        samples_per_second=samples / train_time if train_time > 0 else 0.0,
        diverged=diverged,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        range_test=range_test,
        val_correct=val_correct,
        val_examples=val_examples,
        test_correct=test_correct,
        test_examples=test_examples,
        model=network,
    )


def probe_lrs(center: float, count: int, step: float) -> list[float]:
    """``count`` LRs ``step`` decades apart, centred (in log) on ``center``, smallest first."""
    middle = (count - 1) / 2
    return [center * 10 ** (step * (k - middle)) for k in range(count)]


def probe_runs(range_config: RangeTestConfig) -> int:
    """Complete 1cycle runs :func:`choose_max_lr`'s probes take (0 when there are none)."""
    return range_config.probes + 2 * range_config.probe_refine if range_config.probes else 0


def choose_max_lr(
    config: TrainConfig,
    range_config: RangeTestConfig | None = None,
    *,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
    progress: Callable[[Probe], object] | None = None,
) -> RangeTestResult:
    """The range test's answer, confirmed by complete 1cycle runs around it (probes).

    :func:`balance.range_test.find_max_lr` reads a max LR off the loss curve; then
    the run ``config`` describes (its budget, policy and seed) trains at
    ``range_config.probes`` LRs ``probe_step`` decades apart around that answer, and
    ``probe_refine`` times at two more LRs, half the last step either side of the
    best so far (by default 3 at 0.75 decades, then 2 at 0.375: 5 runs; no refinement
    while every probe has diverged). The probe
    with the best final validation accuracy becomes ``max_lr`` (ties: the smaller
    LR). A curve alone lands within half a decade at best; how much the probes buy
    is measured on the evaluation cases of ``benchmarks/lr_suite.py`` (README, "How
    the max LR is chosen"). ``probes=0`` keeps the curve's answer. The curve's answer
    stays in ``curve_max_lr``; each run in ``probes``; ``progress`` is called after each.
    ``data`` and ``model``: Python objects, as for :func:`train`.
    """
    range_config = RangeTestConfig() if range_config is None else range_config
    data, _, _ = prepare(config, data, model)  # split once, for the test and every probe
    found = find_max_lr(config, range_config, data=data, model=model)
    if range_config.probes == 0:
        return found
    probes: list[Probe] = []

    def probe(lr: float) -> None:
        run = train(config.model_copy(update={"max_lr": lr}), data=data, model=model)
        accuracy = None if run.diverged is not None or run.final is None else run.final.val_accuracy
        probes.append(Probe(lr, accuracy, run.steps))
        if progress is not None:
            progress(probes[-1])

    for lr in probe_lrs(found.max_lr, range_config.probes, range_config.probe_step):
        probe(lr)
    step = range_config.probe_step
    for _ in range(range_config.probe_refine):
        best = _best_probe(probes)
        if best is None:
            break  # every probe diverged: there is nothing to refine around
        step /= 2
        for lr in probe_lrs(best.lr, 2, 2 * step):
            probe(lr)
    best = _best_probe(probes)
    if best is None:
        message = "every probe diverged; max_lr stays the curve's answer"
        warnings.warn(message, RangeTestWarning, stacklevel=2)
        return replace(
            found, curve_max_lr=found.max_lr, probes=probes, warnings=[*found.warnings, message]
        )
    return replace(
        found,
        max_lr=best.lr,
        min_lr=best.lr / config.div_factor,
        curve_max_lr=found.max_lr,
        probes=probes,
    )


def _best_probe(probes: list[Probe]) -> Probe | None:
    """The probe with the best validation accuracy (ties: the smaller LR); None if all diverged."""
    measured = [probe for probe in probes if probe.val_accuracy is not None]
    return max(measured, key=lambda probe: (probe.val_accuracy, -probe.lr), default=None)
