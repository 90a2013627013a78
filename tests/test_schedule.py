"""Schedules: the OneCycleLR contract of both 1cycle policies, and the three baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from balance.config import ConfigError, TrainConfig
from balance.data import Dataset
from balance.schedule import schedule_values
from balance.train import train

TOTAL = 200
MAX_LR = 0.4


def _trace(**options: Any) -> tuple[np.ndarray, np.ndarray]:
    config = TrainConfig(max_lr=MAX_LR, **options)
    values = schedule_values(config, TOTAL, MAX_LR)
    assert len(values.lr) == len(values.momentum) == TOTAL
    return np.array(values.lr), np.array(values.momentum)


@pytest.mark.parametrize("policy", ["smith", "fastai"])
def test_one_cycle_starts_at_max_lr_over_div_factor(policy: str) -> None:
    lr, _ = _trace(policy=policy, div_factor=20.0)
    assert lr[0] == pytest.approx(MAX_LR / 20.0)


@pytest.mark.parametrize(
    ("policy", "pct_start"), [("smith", 0.3), ("smith", 0.45), ("fastai", 0.25), ("fastai", 0.6)]
)
def test_one_cycle_peaks_at_max_lr_after_pct_start_of_the_steps(
    policy: str, pct_start: float
) -> None:
    lr, _ = _trace(policy=policy, pct_start=pct_start)
    assert lr.max() == pytest.approx(MAX_LR)
    assert abs(int(lr.argmax()) - pct_start * TOTAL) <= 2
    assert np.all(np.diff(lr[: lr.argmax() + 1]) > 0)  # rises all the way
    assert np.all(np.diff(lr[lr.argmax() :]) < 0)  # then only falls


@pytest.mark.parametrize("policy", ["smith", "fastai"])
def test_one_cycle_ends_far_below_the_start(policy: str) -> None:
    lr, _ = _trace(policy=policy, div_factor=25.0, final_div_factor=1e3)
    assert lr[-1] == pytest.approx(MAX_LR / (25.0 * 1e3), rel=1e-6)
    assert lr[-1] == lr.min()


def test_smith_falls_back_to_the_start_lr_then_anneals() -> None:
    lr, _ = _trace(policy="smith", pct_start=0.3, div_factor=25.0)
    start, peak = MAX_LR / 25.0, int(lr.argmax())
    back = peak + int(np.argmax(lr[peak:] <= start * (1 + 1e-9)))  # first step back at start
    assert abs(back - 2 * 0.3 * TOTAL) <= 2
    assert lr[back] == pytest.approx(start)
    anneal = np.diff(lr[back:])
    assert np.all(anneal < 0)
    # The anneal is a second, shallower line: from the start LR to the final LR.
    assert np.allclose(anneal, anneal[0])
    assert abs(anneal[0]) < abs(lr[back - 1] - lr[back])


def test_smith_is_linear_in_each_phase() -> None:
    lr, _ = _trace(policy="smith", pct_start=0.3)
    peak = int(lr.argmax())
    rise, fall = np.diff(lr[: peak + 1]), np.diff(lr[peak : 2 * peak + 1])
    assert np.allclose(rise, rise[0]) and rise[0] > 0
    assert np.allclose(fall, -rise[0])  # the fall mirrors the rise


def test_fastai_is_cosine_in_each_phase() -> None:
    lr, _ = _trace(policy="fastai", pct_start=0.25, div_factor=25.0, final_div_factor=1e4)
    start, peak = MAX_LR / 25.0, int(lr.argmax())
    final = start / 1e4

    def cosine(begin: float, end: float, steps: int) -> np.ndarray:
        return end + (begin - end) * (1 + np.cos(np.pi * np.arange(steps + 1) / steps)) / 2

    assert np.allclose(lr[: peak + 1], cosine(start, MAX_LR, peak))
    assert np.allclose(lr[peak:], cosine(MAX_LR, final, TOTAL - 1 - peak))
    rise = np.diff(lr[: peak + 1])
    assert rise[peak // 2] > 3 * rise[0]  # not a line: slow, fast, slow


@pytest.mark.parametrize("policy", ["smith", "fastai"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_one_cycle_momentum_moves_inversely_to_the_lr(policy: str, optimizer: str) -> None:
    lr, momentum = _trace(policy=policy, optimizer=optimizer, base_momentum=0.8, max_momentum=0.97)
    peak = int(lr.argmax())
    assert momentum[0] == pytest.approx(0.97)
    assert momentum[-1] == pytest.approx(0.97, abs=1e-3)
    assert momentum[peak] == pytest.approx(0.8)
    assert momentum.min() == pytest.approx(0.8)
    assert np.all(np.diff(momentum[: peak + 1]) < 0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_baseline_momentum_stays_at_the_configured_value(optimizer: str) -> None:
    _, momentum = _trace(policy="cosine", optimizer=optimizer, momentum=0.7)
    assert np.all(momentum == 0.7)


def test_constant_baseline_stays_at_max_lr() -> None:
    lr, _ = _trace(policy="constant")
    assert np.all(lr == MAX_LR)


def test_step_baseline_divides_by_ten_at_half_and_three_quarters() -> None:
    lr, _ = _trace(policy="step")
    assert np.allclose(lr[: TOTAL // 2], MAX_LR)
    assert np.allclose(lr[TOTAL // 2 : 3 * TOTAL // 4], MAX_LR / 10)
    assert np.allclose(lr[3 * TOTAL // 4 :], MAX_LR / 100)


def test_cosine_baseline_decays_from_max_lr_to_about_zero() -> None:
    lr, _ = _trace(policy="cosine")
    assert lr[0] == MAX_LR
    assert lr[TOTAL // 2] == pytest.approx(MAX_LR / 2)
    assert lr[-1] < MAX_LR * 1e-3
    assert np.all(np.diff(lr) < 0)


@pytest.mark.parametrize(("policy", "steps"), [("fastai", 4), ("fastai", 7), ("smith", 4)])
def test_a_one_cycle_too_short_to_rise_is_a_config_error(policy: str, steps: int) -> None:
    config = TrainConfig(policy=policy, max_lr=MAX_LR)
    with pytest.raises(ConfigError, match=r"^epochs: the .* 1cycle needs pct_start x steps >= 2"):
        schedule_values(config, steps, MAX_LR)


@pytest.mark.parametrize(
    "options",
    [
        {"policy": "smith", "optimizer": "sgd"},
        {"policy": "fastai", "optimizer": "adam"},
        {"policy": "step", "optimizer": "sgd"},
    ],
    ids=["smith-sgd", "fastai-adam", "step-sgd"],
)
def test_training_follows_schedule_values_step_by_step(
    digits: Dataset, options: dict[str, Any]
) -> None:
    config = TrainConfig(
        data="digits", model="mlp", max_lr=0.05, epochs=2, batch_size=64, threads=1, **options
    )
    result = train(config, data=digits)
    planned = schedule_values(config, result.steps, 0.05)
    assert result.steps == 2 * 7  # 400 examples in batches of 64
    assert result.lr_trace == planned.lr
    assert result.momentum_trace == planned.momentum
    # Each epoch reports the LR and momentum of its last step.
    for metrics in result.epochs:
        at = metrics.step - 1
        assert (metrics.lr, metrics.momentum) == (planned.lr[at], planned.momentum[at])
