"""The gradient noise scale: it matches per-example gradients, keeps its interval honest,
round-trips through strict JSON, follows the training run, and refuses bad input."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from balance.config import TrainConfig
from balance.data import Dataset
from balance.gradient_noise import NoiseScale, estimate_noise_scale, measure_noise_scale
from balance.loop import prepare

FIXED_LR = 1e-9  # the weights barely move: every step measures the initial weights


def _config(**options: Any) -> TrainConfig:
    # The MLP on 400 digits at 64 examples a step: 7 steps an epoch (the last of 16).
    values: dict[str, Any] = {
        "data": "digits",
        "model": "mlp",
        "batch_size": 64,
        "epochs": 25,
        "threads": 1,
    }
    return TrainConfig(**{**values, **options})


def _exact(config: TrainConfig, data: Dataset) -> tuple[float, float, int]:
    """tr(Sigma) and |G|^2 of the training split at the initial weights, per example."""
    _, model, _ = prepare(config, data)
    names = [name for name, _ in model.named_parameters()]

    def loss(params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        named = dict(zip(names, params, strict=True))
        logits = torch.func.functional_call(model, named, (x[None],))
        return nn.functional.cross_entropy(logits, y[None])

    params = tuple(model.parameters())
    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        params, data.x_train, data.y_train
    )
    per_example = torch.cat([g.detach().flatten(1) for g in grads], 1).double()
    mean = per_example.mean(0)
    trace = float((per_example - mean).square().sum(1).mean())
    return trace, float(mean.square().sum()), len(per_example)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_at_fixed_weights_the_estimate_agrees_with_per_example_gradients(
    digits: Dataset, seed: int
) -> None:
    config = _config(seed=seed)
    trace, gradient_sq, n = _exact(config, digits)
    noise = measure_noise_scale(config, digits, max_lr=FIXED_LR, steps=175)  # 25 epochs
    # Batches are drawn without replacement from n examples: what the estimators are
    # unbiased for (the module's docstring), and B_simple of the split itself.
    target = (trace * n / (n - 1)) / (gradient_sq - trace / (n - 1))
    exact = trace / gradient_sq
    assert noise.steps == 175
    assert noise.low <= target <= noise.high
    assert 0.5 < noise.b_simple / exact < 2
    assert noise.trace == pytest.approx(trace * n / (n - 1), rel=0.15)
    assert noise.gradient_sq == pytest.approx(gradient_sq - trace / (n - 1), rel=0.15)


def test_the_interval_holds_the_estimate_and_round_trips_through_strict_json(
    digits: Dataset,
) -> None:
    noise = measure_noise_scale(_config(), digits, max_lr=0.1)
    assert noise.steps == 7  # one epoch by default
    assert noise.batch_size == 64
    assert noise.low <= noise.b_simple <= noise.high
    assert noise.b_simple == pytest.approx(noise.trace / noise.gradient_sq)
    text = json.dumps(noise.to_dict(), allow_nan=False)
    assert NoiseScale.from_dict(json.loads(text)) == noise


def test_an_open_ended_interval_is_written_as_null_and_read_back_as_infinity() -> None:
    noise = NoiseScale(64, 120.5, 40.25, math.inf, 0.1, 12.05, 7)
    values = json.loads(json.dumps(noise.to_dict(), allow_nan=False))
    assert values["high"] is None
    assert NoiseScale.from_dict(values) == noise


def test_norms_that_follow_the_model_give_its_noise_scale_exactly() -> None:
    # E|G_b|^2 = |G|^2 + tr / b without noise: the estimate is tr / |G|^2, the interval a point.
    halves = np.array([32, 32, 32, 8] * 3)
    small = 0.5 + 20.0 / halves
    big = 0.5 + 20.0 / (2 * halves)
    noise = estimate_noise_scale(small, big, halves, batch_size=64)
    assert noise.b_simple == pytest.approx(40.0)
    assert noise.low == pytest.approx(40.0) and noise.high == pytest.approx(40.0)
    assert (noise.gradient_sq, noise.trace, noise.steps) == (pytest.approx(0.5), 20.0, 12)


def test_a_gradient_lost_in_noise_gives_an_infinite_noise_scale_not_a_negative_one() -> None:
    halves = np.full(8, 16)
    noise = estimate_noise_scale(np.full(8, 3.0), np.full(8, 1.0), halves, batch_size=32)
    assert noise.gradient_sq < 0
    assert noise.b_simple == noise.low == noise.high == math.inf


def test_the_steps_train_the_model_like_a_run(digits: Dataset) -> None:
    # Same seed, same batches: only the weights' path differs, and it shows in |G|^2.
    fixed = measure_noise_scale(_config(epochs=5), digits, max_lr=FIXED_LR, steps=35)
    moving = measure_noise_scale(_config(epochs=5), digits, max_lr=0.2, steps=35)
    assert moving.gradient_sq > 2 * fixed.gradient_sq


def test_a_batch_of_one_cannot_be_split_and_is_refused(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="batch_size: must be >= 2 to split in two, got 1"):
        measure_noise_scale(_config(batch_size=1), digits, max_lr=0.1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 1}, "steps: must be in 2..175"),
        ({"steps": 176}, "steps: must be in 2..175"),
        ({"resamples": 0}, "resamples: must be >= 1"),
        ({"max_lr": 0.0}, "max_lr: must be > 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_rule(
    digits: Dataset, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        measure_noise_scale(_config(), digits, **{"max_lr": 0.1, **options})
