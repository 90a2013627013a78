"""The batch-size scaling fit: max_lr = c * B**k through stage 1's answers, and lr_scaling 'fit'."""

from __future__ import annotations

import math

import numpy as np
import pytest
from study_files import study_config, tiny_values

from balance.config import ConfigError
from balance.data import Dataset
from balance.range_test import fit_batch_scaling
from balance.study import fit_max_lrs


def test_an_exact_power_law_is_recovered_with_its_constant() -> None:
    fit = fit_batch_scaling({size: 0.02 * size**0.7 for size in (32, 64, 128, 256)})
    assert fit is not None
    assert fit.k == pytest.approx(0.7) and fit.predict(512) == pytest.approx(0.02 * 512**0.7)
    # points exactly on a line show no noise: no interval, rather than a zero-width one
    assert math.isnan(fit.low) and math.isnan(fit.high)
    assert fit.to_dict()["rules"] == {"linear": None, "sqrt": None}


def test_two_batch_sizes_fix_a_line_but_give_no_interval() -> None:
    fit = fit_batch_scaling({100: 0.1, 400: 0.2})
    assert fit is not None and fit.k == pytest.approx(0.5)
    assert math.isnan(fit.low) and fit.consistent_with(0.5) is None
    assert fit.to_dict()["low"] is None
    assert fit_batch_scaling({100: 0.1}) is None


def test_the_interval_on_k_covers_the_true_exponent_at_its_level() -> None:
    # LRs scattered log-normally about a square-root law: the 90% interval must cover
    # k = 0.5 in about 90% of studies of 3 and of 5 batch sizes.
    rng = np.random.default_rng(0)
    for sizes in ((64, 128, 256), (32, 64, 128, 256, 512)):
        covered = 0
        for _ in range(2000):
            lrs = {b: 0.01 * b**0.5 * math.exp(rng.normal(0, 0.3)) for b in sizes}
            fit = fit_batch_scaling(lrs)
            assert fit is not None
            covered += fit.low <= 0.5 <= fit.high
        assert 0.87 <= covered / 2000 <= 0.93, (sizes, covered)


def test_bad_points_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        fit_batch_scaling({32: 0.1, 64: 0.0})
    with pytest.raises(ValueError, match="positive"):
        fit_batch_scaling({32: 0.1, 64: math.nan})


def test_lr_scaling_fit_trains_each_size_on_the_line_through_its_range_tests(
    digits: Dataset,
) -> None:
    config = study_config(
        tiny_values(
            "fitted",
            lr_scaling="fit",
            range_test={"num_steps": 20, "repeats": 1, "probes": 0},
            train={"max_lr": None},
            search={"weight_decay": [0.0], "batch_size": [16, 32, 64]},
        )
    )
    max_lrs, tests = fit_max_lrs(config, digits, threads=1)
    assert sorted(tests) == [16, 32, 64]  # every size's own test is kept
    fit = fit_batch_scaling({size: test.max_lr for size, test in tests.items()})
    assert fit is not None
    for size in (16, 32, 64):
        assert max_lrs[size] == pytest.approx(fit.predict(size))
    slopes = np.diff(np.log([max_lrs[s] for s in (16, 32, 64)])) / math.log(2)
    assert slopes == pytest.approx([fit.k, fit.k])


@pytest.mark.parametrize(
    "overrides",
    [
        {"search": {"batch_size": [32, 64]}, "train": {"max_lr": None}},
        {"search": {"batch_size": [32, 64, 128]}},  # the file fixes max_lr: nothing to fit
    ],
)
def test_lr_scaling_fit_needs_three_range_tested_batch_sizes(overrides: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match="lr_scaling 'fit'"):
        study_config(tiny_values("fit-bad", lr_scaling="fit", **overrides))
