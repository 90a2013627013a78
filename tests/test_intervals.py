"""The cell interval covers what it claims on data simulated with known seed and example noise."""

from __future__ import annotations

import numpy as np
import pytest

from balance.analysis._intervals import cell_interval, correctness_matrix


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# The accuracy expected on a new split and a new seed: per-example logits ~ N(1.5, 1.5),
# a seed adds N(0, 0.3). Read off a large sample once.
_population = np.random.default_rng(99)
TRUTH = float(
    sigmoid(_population.normal(1.5, 1.5, 20_000)[:, None] + _population.normal(0, 0.3, 200)).mean()
)


def simulated_cell(rng: np.random.Generator, seeds: int, examples: int) -> list[np.ndarray]:
    """One cell's runs: a split of examples of varying difficulty, seeds that shift it."""
    difficulty = rng.normal(1.5, 1.5, examples)  # logits of this split's examples
    shifts = rng.normal(0.0, 0.3, seeds)  # what a seed adds
    return [rng.random(examples) < sigmoid(difficulty + shift) for shift in shifts]


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_interval_covers_the_population_accuracy_near_its_level(seeds: int) -> None:
    rng = np.random.default_rng(0)
    covered = []
    for study in range(100):
        interval = cell_interval(simulated_cell(rng, seeds, 400), seed=study, resamples=1000)
        covered.append(interval.low <= TRUTH <= interval.high)
    rate = float(np.mean(covered))
    # Nominal 90%; 100 studies leave a sampling s.e. of 3 points. Few seeds make the
    # seed part coarse, so the bootstrap may err either way by a few points more.
    assert 0.78 <= rate <= 0.99, rate


def test_the_interval_is_as_wide_as_the_binomial_error_of_one_seed() -> None:
    # Two independent seeds of 400 examples near 0.97: the split alone has a s.e. of about
    # 0.85 points; the mean of two seeds keeps that much once the seed part is added back.
    rng = np.random.default_rng(1)
    widths = []
    for study in range(20):
        interval = cell_interval([rng.random(400) < 0.97 for _ in range(2)], seed=study)
        assert interval.low <= interval.mean <= interval.high
        widths.append(interval.high - interval.low)
    assert np.mean(widths) > 2 * 1.645 * 0.0085 * 0.8


def test_runs_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="different numbers of examples"):
        correctness_matrix([np.ones(3, bool), np.ones(4, bool)])
