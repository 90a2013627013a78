"""The training loop and what it stands on: device, threads, data on the device, evaluation.

The hot loop is forward, loss, zero_grad, backward, step, schedule step, and
keeping a detached handle on the loss (no copy, no kernel). The host reads the
epoch's losses once, stacked (one sync), which is also when a non-finite loss is
noticed and the run is stopped. The LR range test and :func:`balance.train.train`
both build on :func:`prepare` and :func:`evaluate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from balance.config import ConfigError, Precision, TrainConfig
from balance.data import Dataset, epoch_batches
from balance.models import ModelFactory, build_model
from balance.objects import DataArgument, TrainingData, resolve_data
from balance.precision import autocast, backward_and_step, grad_scaler
from balance.streaming import Batch, Split, StreamedSplits

EVAL_BATCH_SIZE = 1024


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured. ``train_loss`` is the mean loss of its steps (dropout on)."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    momentum: float
    test_accuracy: float | None = None


@dataclass(frozen=True)
class Divergence:
    """Where a run's loss first became non-finite."""

    step: int
    lr: float
    loss: float


EpochCallback = Callable[[EpochMetrics], None]
"""Called after every epoch; raising (for example ``optuna.TrialPruned``) stops the run."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    return device


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count (process-wide); ``None`` leaves it as it is."""
    if threads is not None:
        torch.set_num_threads(threads)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    *,
    precision: Precision = "32",
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` in eval mode.

    The forward runs under ``precision``'s autocast; the loss is summed in fp32.
    """
    return evaluate_batches(model, slices(x, y, batch_size), x.device, precision=precision)


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module,
    batches: Iterator[Batch],
    device: torch.device,
    *,
    precision: Precision = "32",
) -> tuple[float, float]:
    """:func:`evaluate` over ``(x, y)`` batches on ``device`` (:func:`split_batches`)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    cast = autocast(precision, device)
    count = 0
    for xb, target in batches:
        with cast:  # the cross-entropy too: autocast computes it in fp32
            logits = model(xb)
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
        count += len(target)
    model.train(was_training)
    loss, hits = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()  # one sync
    return loss / count, hits / count


def correct_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    *,
    precision: Precision = "32",
) -> Tensor:
    """Whether ``model`` (in eval mode) classifies each example of ``(x, y)`` right (bools, CPU)."""
    return correct_batches(model, slices(x, y, batch_size), x.device, precision=precision)


def correct_batches(
    model: nn.Module,
    batches: Iterator[Batch],
    device: torch.device,
    *,
    precision: Precision = "32",
) -> Tensor:
    """:func:`correct_examples` over ``(x, y)`` batches on ``device`` (:func:`split_batches`)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(precision, device):
        hits = [model(xb).argmax(1) == yb for xb, yb in batches]
    model.train(was_training)
    return torch.cat(hits).cpu() if hits else torch.zeros(0, dtype=torch.bool)


def slices(x: Tensor, y: Tensor, batch_size: int = EVAL_BATCH_SIZE) -> Iterator[Batch]:
    """``(x, y)`` in order, as views of ``batch_size`` examples (the last may be smaller)."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def data_device(data: TrainingData) -> torch.device:
    """The device either kind of data puts its batches on."""
    return data.x_train.device if isinstance(data, Dataset) else data.device


def split_size(data: TrainingData, split: Split) -> int:
    """Examples in ``split`` (``train``, ``val`` or ``test``) of either kind of data."""
    return len(getattr(data, f"y_{split}")) if isinstance(data, Dataset) else data.size(split)


def training_epochs(
    data: TrainingData, batch_size: int, generator: torch.Generator, *, augment: bool = False
) -> Callable[[], Iterator[Batch]]:
    """One shuffled epoch of ``(xb, yb)`` training batches on the data's device per call.

    The one source of training batches (:func:`fit`, the range test, the noise scale):
    index slices of in-memory tensors (:func:`balance.data.epoch_batches`, as fast as
    ever), or a DataLoader over streamed torch Datasets
    (:meth:`balance.streaming.StreamedSplits.epochs`), both shuffled by ``generator``.
    """
    if isinstance(data, Dataset):
        return partial(
            epoch_batches, data.x_train, data.y_train, batch_size, generator, augment=augment
        )
    return data.epochs(batch_size, generator, augment=augment)


def split_batches(data: TrainingData, split: Split) -> Iterator[Batch]:
    """``split`` of either kind of data in order, in evaluation batches on its device."""
    if isinstance(data, Dataset):
        return slices(getattr(data, f"x_{split}"), getattr(data, f"y_{split}"))
    return data.batches(split, EVAL_BATCH_SIZE)


def validation_subset(data: TrainingData, size: int) -> Callable[[], Iterator[Batch]]:
    """The same ``size`` validation examples in evaluation batches, per call (the range test).

    Chosen with a fixed seed, independent of any run's generator. Streamed ones are
    read once and kept on the device (a few hundred examples, measured every few steps).
    """
    order = torch.randperm(split_size(data, "val"), generator=torch.Generator().manual_seed(0))
    if isinstance(data, StreamedSplits):
        read = list(data.batches(Subset(data.val, order[:size].tolist()), EVAL_BATCH_SIZE))
        x_val, y_val = torch.cat([x for x, _ in read]), torch.cat([y for _, y in read])
    else:
        index = order[:size].to(data.x_val.device)
        x_val, y_val = data.x_val[index], data.y_val[index]
    return lambda: slices(x_val, y_val)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: TrainingData,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = False,
    callback: EpochCallback | None = None,
    track_test: bool = False,
    precision: Precision = "32",
) -> tuple[list[EpochMetrics], list[float], list[float], float, Divergence | None]:
    """Train ``model`` in place for ``epochs``; stop early, without raising, on divergence.

    Returns the epoch metrics, the per-step LR and momentum traces, the seconds
    spent in training steps (evaluation excluded), and the divergence, if any.
    ``track_test`` also measures test accuracy every epoch: for the final
    comparison plots only, never for choosing anything. ``precision`` other than
    ``"32"`` runs forward and loss under autocast (:mod:`balance.precision`); under
    ``"16-mixed"`` a step the scaler skips (overflowing gradients, finite loss) is no
    divergence, and the schedule steps on.
    """
    criterion = nn.CrossEntropyLoss()
    # fp32: a nullcontext and no scaler, the loop as it was (benchmarks/loop_overhead.py).
    device = data_device(data)
    cast = autocast(precision, device)
    scaler = grad_scaler(precision, device)
    next_epoch = training_epochs(data, batch_size, generator, augment=augment)
    lr_trace: list[float] = []
    momentum_trace: list[float] = []
    history: list[EpochMetrics] = []
    group = optimizer.param_groups[0]
    momentum_key = "betas" if "betas" in group else "momentum"
    train_time = 0.0
    step = 0
    model.train()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        first = step
        # Detached loss tensors, stacked once per epoch: writing each into a preallocated
        # tensor instead cost a select and a copy_ op per step (torch.profiler,
        # benchmarks/loop_overhead.py), a kernel launch per step on CUDA.
        epoch_losses: list[Tensor] = []
        for xb, yb in next_epoch():
            lr_trace.append(group["lr"])
            momentum_trace.append(group[momentum_key])
            with cast:
                loss = criterion(model(xb), yb)  # fp32: autocast runs cross-entropy in fp32
            optimizer.zero_grad(set_to_none=True)
            backward_and_step(loss, optimizer, scaler)  # fp32: backward(), step()
            scheduler.step()
            epoch_losses.append(loss.detach())
            step += 1
        losses = torch.stack(epoch_losses).tolist()  # the epoch's one host sync
        train_time += time.perf_counter() - started
        bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
        if bad is not None:
            at = first + bad
            return (
                history,
                lr_trace,
                _momenta(momentum_trace),
                train_time,
                Divergence(step=at, lr=lr_trace[at], loss=losses[bad]),
            )
        val_loss, val_accuracy = evaluate_batches(
            model, split_batches(data, "val"), device, precision=precision
        )
        if not math.isfinite(val_loss):  # the epoch's last update blew the weights up
            return (
                history,
                lr_trace,
                _momenta(momentum_trace),
                train_time,
                Divergence(step=step - 1, lr=lr_trace[-1], loss=val_loss),
            )
        metrics = EpochMetrics(
            epoch=epoch,
            step=step,
            train_loss=sum(losses) / len(losses),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=lr_trace[-1],
            momentum=_momenta(momentum_trace[-1:])[0],  # the step `lr` was recorded at
            test_accuracy=(
                evaluate_batches(model, split_batches(data, "test"), device, precision=precision)[1]
                if track_test
                else None
            ),
        )
        history.append(metrics)
        if callback is not None:
            callback(metrics)
    return history, lr_trace, _momenta(momentum_trace), train_time, None


def _momenta(trace: list[Any]) -> list[float]:
    # Adam's trace holds (beta1, beta2) tuples; keep beta1.
    return [value[0] if isinstance(value, tuple) else value for value in trace]


def prepare(
    config: TrainConfig,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
) -> tuple[TrainingData, nn.Module, torch.device]:
    """Seed, pick the device, load the data onto it and build the model.

    ``data`` and ``model`` are the Python API's objects (:mod:`balance.objects`):
    given, they stand in for ``config.data`` and ``config.model``.
    """
    set_threads(config.threads)
    device = resolve_device(config.device)
    data = resolve_data(data, config)
    n_train = split_size(data, "train")
    if config.batch_size > n_train:
        raise ConfigError(
            f"batch_size: {config.batch_size} is larger than the training split "
            f"({n_train} examples)"
        )
    if config.augment and not data.is_image:
        raise ConfigError(f"augment: needs image data, {data.name!r} has shape {data.input_shape}")
    data = data.to(device)
    torch.manual_seed(config.seed)
    factory = config.model if model is None else model
    network = build_model(factory, data.input_shape, data.num_classes, config.dropout)
    return data, network.to(device), device
