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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from balance.config import ConfigError, TrainConfig
from balance.data import Dataset, epoch_batches, load_dataset
from balance.models import build_model

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
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    loss, hits = torch.stack([loss_sum, correct.to(loss_sum.dtype)]).tolist()  # one sync
    return loss / len(x), hits / len(x)


def correct_examples(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> Tensor:
    """Whether ``model`` (in eval mode) classifies each example of ``(x, y)`` right (bools, CPU)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        hits = [
            model(x[start : start + batch_size]).argmax(1) == y[start : start + batch_size]
            for start in range(0, len(x), batch_size)
        ]
    model.train(was_training)
    return torch.cat(hits).cpu() if hits else torch.zeros(0, dtype=torch.bool)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = False,
    callback: EpochCallback | None = None,
    track_test: bool = False,
) -> tuple[list[EpochMetrics], list[float], list[float], float, Divergence | None]:
    """Train ``model`` in place for ``epochs``; stop early, without raising, on divergence.

    Returns the epoch metrics, the per-step LR and momentum traces, the seconds
    spent in training steps (evaluation excluded), and the divergence, if any.
    ``track_test`` also measures test accuracy every epoch: for the final
    comparison plots only, never for choosing anything.
    """
    criterion = nn.CrossEntropyLoss()
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
        for xb, yb in epoch_batches(
            data.x_train, data.y_train, batch_size, generator, augment=augment
        ):
            lr_trace.append(group["lr"])
            momentum_trace.append(group[momentum_key])
            loss = criterion(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
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
        val_loss, val_accuracy = evaluate(model, data.x_val, data.y_val)
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
            test_accuracy=evaluate(model, data.x_test, data.y_test)[1] if track_test else None,
        )
        history.append(metrics)
        if callback is not None:
            callback(metrics)
    return history, lr_trace, _momenta(momentum_trace), train_time, None


def _momenta(trace: list[Any]) -> list[float]:
    # Adam's trace holds (beta1, beta2) tuples; keep beta1.
    return [value[0] if isinstance(value, tuple) else value for value in trace]


def prepare(
    config: TrainConfig, data: Dataset | None = None
) -> tuple[Dataset, nn.Module, torch.device]:
    """Seed, pick the device, load the data onto it and build the model."""
    set_threads(config.threads)
    device = resolve_device(config.device)
    if data is None:
        data = load_dataset(
            config.data,
            data_path=config.data_path,
            validation_fraction=config.validation_fraction,
            split_seed=config.split_seed,
        )
    if config.batch_size > len(data.x_train):
        raise ConfigError(
            f"batch_size: {config.batch_size} is larger than the training split "
            f"({len(data.x_train)} examples)"
        )
    if config.augment and not data.is_image:
        raise ConfigError(f"augment: needs image data, {data.name!r} has shape {data.input_shape}")
    data = data.to(device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes, config.dropout)
    return data, model.to(device), device
