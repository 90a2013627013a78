"""Data generators and model widths of the LR-selection suite, as balance plugins.

Each generator is a ``"module:function"`` data plugin (no arguments, returns
``(x_train, y_train, x_test, y_test)``) and each model a ``"module:function"``
model plugin, so the suite's cases are plain :class:`balance.config.TrainConfig`
values, trained by the same code a user's study runs. All data is generated
offline with fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.datasets import make_classification
from torch import nn

from balance.models import mlp

TEST_SIZE = 2000


def tabular() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tabular: 30 features on mixed scales (12 informative, 6 redundant), 5 classes, 3% noise."""
    x, y = make_classification(
        n_samples=8000,
        n_features=30,
        n_informative=12,
        n_redundant=6,
        n_classes=5,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.03,
        random_state=0,
    )
    scales = np.random.default_rng(0).lognormal(0.0, 1.5, size=x.shape[1])
    x = (x * scales).astype(np.float32)  # features on different scales, as real tables have
    return x[TEST_SIZE:], y[TEST_SIZE:], x[:TEST_SIZE], y[:TEST_SIZE]


def spirals() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic: three interleaved 2-D spirals with radial noise, lifted to 10 random features."""
    rng = np.random.default_rng(1)
    n, arms = 8000, 3
    y = rng.integers(0, arms, size=n)
    t = rng.uniform(0.0, 1.0, size=n)
    angle = 3.0 * math.pi * t + 2.0 * math.pi * y / arms
    radius = t + rng.normal(0.0, 0.06, size=n)
    plane = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    lift = rng.normal(0.0, 1.0, size=(2, 10))
    x = np.tanh(plane @ lift).astype(np.float32)  # a smooth, non-linear embedding
    return x[TEST_SIZE:], y[TEST_SIZE:], x[:TEST_SIZE], y[:TEST_SIZE]


def mlp64(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """A narrow ReLU MLP: two hidden layers of 64."""
    return mlp(input_shape, num_classes, dropout, width=64)


def mlp512(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """A wide ReLU MLP: two hidden layers of 512."""
    return mlp(input_shape, num_classes, dropout, width=512)


def waves() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sequences: 6 classes (sine, square, sawtooth x 2 frequency bands), 64 steps, noisy.

    Random phase, amplitude, frequency within the band, a random offset and additive
    Gaussian noise; shaped ``(1, 64)`` for a 1-D CNN. Added with the second evaluation
    set, so no rule or default was chosen on it.
    """
    rng = np.random.default_rng(2)
    n, length = 8000, 64
    y = rng.integers(0, 6, size=n)
    shape, band = y % 3, y // 3
    frequency = np.where(band == 0, rng.uniform(1.5, 3.0, n), rng.uniform(3.0, 6.0, n))
    phase = rng.uniform(0.0, 2.0 * math.pi, n)
    t = np.arange(length) / length
    angle = 2.0 * math.pi * frequency[:, None] * t[None, :] + phase[:, None]
    sine = np.sin(angle)
    square = np.sign(sine)
    sawtooth = 2.0 * ((angle / (2.0 * math.pi)) % 1.0) - 1.0
    clean = np.choose(shape[:, None], [sine, square, sawtooth])
    amplitude = rng.lognormal(0.0, 0.3, n)[:, None]
    offset = rng.normal(0.0, 0.3, n)[:, None]
    x = amplitude * clean + offset + rng.normal(0.0, 0.6, size=(n, length))
    x = x[:, None, :].astype(np.float32)
    return x[TEST_SIZE:], y[TEST_SIZE:], x[:TEST_SIZE], y[:TEST_SIZE]
