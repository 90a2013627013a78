"""The simple gradient noise scale of a run, measured cheaply from its first steps.

McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch
Training", appendix A: ``B_simple = tr(Sigma) / |G|^2``, where ``G`` is the
full-data gradient of the loss and ``Sigma`` the covariance of one example's
gradient. Below ``B_simple`` examples per step, doubling the batch nearly halves the
steps a run needs; far above it, a bigger batch buys almost nothing.

Two batch sizes suffice (their eq. A.2 and A.3): every step of the run is split into
two halves, each half's gradient comes from its own backward pass, and
``E|G_b|^2 = |G|^2 + tr(Sigma) / b`` is solved for both terms from the halves'
squared norms (``b = B/2``) and that of their mean (``b = 2 * (B/2)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from balance.config import TrainConfig
from balance.loop import prepare, split_size, training_epochs
from balance.models import ModelFactory
from balance.objects import DataArgument
from balance.optim import build_optimizer
from balance.schedule import build_scheduler

BLOCK_STEPS = 10  # bootstrap block: consecutive steps share weights and so are correlated
INTERVAL = (0.05, 0.95)  # a 90% interval
_FLOATS = ("b_simple", "low", "high", "gradient_sq", "trace")


@dataclass(frozen=True)
class NoiseScale:
    """``B_simple`` of a run at one batch size, with a 90% block-bootstrap interval.

    ``b_simple``, ``low`` and ``high`` are in examples. ``b_simple`` is
    ``trace / gradient_sq``, a ratio of means over ``steps`` steps; it is ``inf`` when
    ``gradient_sq <= 0`` (the gradient is too small for these steps to tell from
    noise), and it may be negative when ``trace < 0`` (noise too small to resolve).
    ``high`` (and ``low``) is ``inf`` when the bootstrap resamples put ``|G|^2 <= 0``
    at or beyond that quantile: the interval is then open-ended, not clipped. It is a
    percentile interval: it holds ``b_simple`` as a rule, not by construction.
    """

    batch_size: int  # examples per step of the run it was measured in
    b_simple: float  # examples
    low: float  # examples: 5% quantile of the bootstrap
    high: float  # examples: 95% quantile of the bootstrap
    gradient_sq: float  # mean estimate of |G|^2, the squared norm of the loss gradient
    trace: float  # mean estimate of tr(Sigma), per example
    steps: int  # steps averaged

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict: infinity is written ``None`` (never NaN, never ``-inf``)."""
        out = asdict(self)
        for name in _FLOATS:
            out[name] = out[name] if math.isfinite(out[name]) else None
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NoiseScale:
        """The inverse of :meth:`to_dict`: ``None`` reads back as ``inf``."""
        floats = {
            name: math.inf if values[name] is None else float(values[name]) for name in _FLOATS
        }
        return cls(batch_size=int(values["batch_size"]), steps=int(values["steps"]), **floats)


def measure_noise_scale(
    config: TrainConfig,
    data: DataArgument | None,
    *,
    max_lr: float,
    steps: int | None = None,
    resamples: int = 500,
    model: ModelFactory | None = None,
) -> NoiseScale:
    """``B_simple`` over the first ``steps`` steps (default: one epoch) of ``config``'s run.

    The run is the one :func:`balance.train.train` would do at ``max_lr`` (with the
    same ``data`` and ``model`` objects, if any): the same
    seeded model, optimizer, schedule (over ``config.epochs`` epochs) and batch order,
    in train mode (dropout on). Each batch of ``B = config.batch_size`` examples is
    split into two halves of ``B // 2`` (one example is left out when it is odd);
    the step then applies the mean of the halves' gradients, so the weights follow the
    real run. With dropout, or with BatchNorm (each half is normalized by its own
    statistics, and running statistics update twice a step), the trajectory is close
    to, not identical with, the run :func:`~balance.train.train` does.

    The gradient measured is the loss's only: weight decay is left out. For ``sgd``
    and ``adam`` it is PyTorch's ``weight_decay``, added inside the optimizer step,
    and for ``adamw`` it is decoupled, so the loss gradient never holds it anyway.

    Per step, McCandlish et al.'s unbiased estimates (eq. A.2, A.3) with
    ``b = B // 2`` and ``B' = 2b``::

        |G|^2 ~ (B' |G_B'|^2 - b |G_b|^2) / (B' - b)
        tr(Sigma) ~ (|G_b|^2 - |G_B'|^2) / (1/b - 1/B')

    where ``|G_b|^2`` is the mean of the halves' squared norms and ``|G_B'|^2`` the
    squared norm of their mean. Numerator and denominator are averaged over the steps,
    then divided. The 90% interval is a moving-block bootstrap over steps (blocks of
    ``BLOCK_STEPS``, ``resamples`` times, seeded by ``config.seed``). Batches are drawn
    without replacement from the split's ``N`` examples, so, with ``G`` and ``Sigma``
    the split's, the estimates are unbiased for ``tr(Sigma) N / (N - 1)`` and
    ``|G|^2 - tr(Sigma) / (N - 1)``: for ``N`` independent draws and weights that do not
    depend on them (as at initialization), unbiased for the data distribution's own
    ``tr(Sigma)`` and ``|G|^2``. The readings differ only when ``B_simple`` nears ``N``.
    A run whose loss becomes non-finite is averaged over the steps before it.

    Raises:
        ValueError: a batch size below 2, a ``max_lr`` not above 0, ``steps`` outside
            ``2..epochs x steps per epoch``, or ``resamples`` below 1.

    Example:
        >>> from balance.data import load_dataset
        >>> config = TrainConfig(data="digits", model="mlp", batch_size=64)
        >>> noise = measure_noise_scale(config, load_dataset("digits"), max_lr=0.1)
        >>> noise.steps  # one epoch of 1293 training examples
        21
    """
    if config.batch_size < 2:
        raise ValueError(f"batch_size: must be >= 2 to split in two, got {config.batch_size}")
    if not max_lr > 0:
        raise ValueError(f"max_lr: must be > 0, got {max_lr}")
    if resamples < 1:
        raise ValueError(f"resamples: must be >= 1, got {resamples}")
    data, network, device = prepare(config, data, model)
    steps_per_epoch = math.ceil(split_size(data, "train") / config.batch_size)
    total = config.epochs * steps_per_epoch
    steps = min(total, max(2, steps_per_epoch)) if steps is None else steps
    if not 2 <= steps <= total:
        raise ValueError(f"steps: must be in 2..{total} (epochs x steps per epoch), got {steps}")
    optimizer = build_optimizer(network, config, max_lr)
    scheduler = build_scheduler(optimizer, config, total, max_lr)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    next_epoch = training_epochs(data, config.batch_size, generator, augment=config.augment)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    criterion = nn.CrossEntropyLoss()
    norms: list[Tensor] = []  # per measured step: (|G_b|^2, |G_2b|^2), left on the device
    halves: list[int] = []
    taken = 0
    network.train()
    while taken < steps:
        for xb, yb in next_epoch():
            if taken == steps:
                break
            half = len(xb) // 2
            optimizer.zero_grad(set_to_none=True)
            if half == 0:  # a last batch of one example: a plain step, nothing measured
                criterion(network(xb), yb).backward()
            else:
                first = _flat_grad(criterion(network(xb[:half]), yb[:half]), params)
                second = _flat_grad(
                    criterion(network(xb[half : 2 * half]), yb[half : 2 * half]), params
                )
                mean = (first + second) / 2
                small = (first.square().sum() + second.square().sum()) / 2
                norms.append(torch.stack([small, mean.square().sum()]))
                halves.append(half)
                _set_grads(params, mean)
            optimizer.step()
            scheduler.step()
            taken += 1
        if norms and not bool(norms[-1].isfinite().all()):  # once an epoch: a host sync
            break
    measured = torch.stack(norms).double().cpu().numpy()
    finite = np.isfinite(measured).all(axis=1)
    count = len(finite) if finite.all() else int(np.argmin(finite))
    if count < min(2, len(finite)):
        raise ValueError(f"max_lr: the gradient was non-finite by step {count + 1} at {max_lr}")
    return estimate_noise_scale(
        measured[:count, 0],
        measured[:count, 1],
        np.asarray(halves[:count]),
        batch_size=config.batch_size,
        resamples=resamples,
        seed=config.seed,
    )


def estimate_noise_scale(
    small_sq: np.ndarray,
    big_sq: np.ndarray,
    halves: np.ndarray,
    *,
    batch_size: int,
    resamples: int = 500,
    seed: int = 0,
) -> NoiseScale:
    """``B_simple`` from per-step squared gradient norms at two batch sizes (pure).

    Step ``i`` measured ``small_sq[i] = |G_b|^2`` at ``b = halves[i]`` and
    ``big_sq[i] = |G_2b|^2``; see :func:`measure_noise_scale` for the estimators and
    the interval. ``batch_size`` is only recorded.

    Raises:
        ValueError: fewer than 2 steps, arrays of different lengths, or a half below 1.
    """
    small_sq, big_sq = np.asarray(small_sq, float), np.asarray(big_sq, float)
    b_small = np.asarray(halves, float)
    if not len(small_sq) == len(big_sq) == len(b_small):
        lengths = f"{len(small_sq)}, {len(big_sq)} and {len(b_small)}"
        raise ValueError(f"steps: small_sq, big_sq and halves must be as long, got {lengths}")
    if len(small_sq) < 2:
        raise ValueError(f"steps: an interval needs >= 2 measured steps, got {len(small_sq)}")
    if (b_small < 1).any():
        raise ValueError(f"halves: every half must hold >= 1 example, got {b_small.min():g}")
    b_big = 2 * b_small
    gradient_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    n = len(trace)
    block = max(1, min(BLOCK_STEPS, n // 4))  # at least 4 blocks, or resamples never vary
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(resamples, math.ceil(n / block)))
    picks = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    ratios = _ratio(trace[picks].mean(axis=1), gradient_sq[picks].mean(axis=1))
    low, high = np.quantile(ratios, INTERVAL, method="inverted_cdf")  # order statistics
    return NoiseScale(
        batch_size=batch_size,
        b_simple=float(_ratio(np.array(trace.mean()), np.array(gradient_sq.mean()))),
        low=float(low),
        high=float(high),
        gradient_sq=float(gradient_sq.mean()),
        trace=float(trace.mean()),
        steps=n,
    )


def _ratio(trace: np.ndarray, gradient_sq: np.ndarray) -> np.ndarray:
    # |G|^2 <= 0: no measurable signal, so no batch size is past the noise scale.
    safe = np.where(gradient_sq > 0, gradient_sq, 1.0)
    return np.where(gradient_sq > 0, trace / safe, np.inf)


def _flat_grad(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    """The loss's gradient over ``params``, flattened into one vector (zeros where unused)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    filled = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    return torch.cat([g.reshape(-1) for g in filled])


def _set_grads(params: list[nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
