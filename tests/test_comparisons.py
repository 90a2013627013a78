"""The noise-aware comparisons hold their level on null studies and find planted effects.

Studies are simulated cheaply from stored per-example results: ``data/mnist1d_difficulty.npz``
holds, for each of the default study's 4,000 validation examples, how many of its 60
seed runs (every cell, 2 seeds) got it right. A simulated run gets example i right with
probability sigmoid(logit(p_i) + seed shift + planted effect): the examples' real
difficulty, a seed that moves the whole model, and whatever the test plants.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from balance.analysis._comparisons import (
    ALPHA,
    CellRuns,
    axis_tests,
    critical_value,
    paired_difference,
    separation,
    worse_than,
)
from balance.analysis._intervals import NoiseModel
from balance.analysis._noise import best_set, race_round

STORED = np.load(Path(__file__).parent / "data" / "mnist1d_difficulty.npz")
# Smoothed so no example is certain: a run can get any example wrong.
P_CORRECT = (STORED["correct"] + 0.5) / (int(STORED["runs"]) + 1.0)
LOGITS = np.log(P_CORRECT / (1 - P_CORRECT))
SEED_SHIFT = 0.15  # logit sd between seeds: about 0.4 points of accuracy, as measured
AXES = {
    "weight_decay": [0.0, 1e-4, 5e-4, 2e-3],
    "dropout": [0.0, 0.1, 0.2],
    "batch_size": [100, 200],
}
STUDIES = 200
# The most a true rate of ALPHA reads as in STUDIES studies, two binomial s.e. above.
TOLERANCE = ALPHA + 2 * np.sqrt(ALPHA * (1 - ALPHA) / STUDIES)


def simulated_runs(rng: np.random.Generator, examples: np.ndarray, shift: float, seeds: int):
    logits = LOGITS[examples] + shift
    return np.vstack(
        [rng.random(len(examples)) < 1 / (1 + np.exp(-(logits + s)))
         for s in rng.normal(0, SEED_SHIFT, seeds)]
    )  # fmt: skip


def simulated_study(
    rng: np.random.Generator, *, examples: int = 400, seeds: int = 2, planted: float = 0.0
) -> list[CellRuns]:
    """24 cells on one split; ``planted`` logits off every cell at the largest weight decay."""
    split = rng.choice(len(LOGITS), examples, replace=False)
    cells = []
    for wd, dropout, size in itertools.product(*AXES.values()):
        shift = -planted if wd == AXES["weight_decay"][-1] else 0.0
        params = {"weight_decay": wd, "dropout": dropout, "batch_size": size}
        runs = simulated_runs(rng, split, shift, seeds)
        cells.append(CellRuns(str(params), params, tuple(range(seeds)), runs))
    return sorted(cells, key=lambda cell: -cell.mean)


def judged(cells: list[CellRuns], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, bool]]:
    """Which cells are worse than the best, and which axes have a detectable effect."""
    model = NoiseModel.of([cell.correct for cell in cells])
    means = model.draws(rng, 500)
    separated, _ = worse_than(model, 0, critical_value(model, rng, 500))
    values = {name: [float(cell.params[name]) for cell in cells] for name in AXES}
    tests = axis_tests(cells, means, values, rng, permutations=500)
    return separated, {test.name: test.detectable for test in tests}


def test_null_studies_claim_an_effect_at_most_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    any_cell, any_axis = 0, 0
    per_axis = dict.fromkeys(AXES, 0)
    for _ in range(STUDIES):
        separated, detectable = judged(simulated_study(rng), rng)
        any_cell += bool(separated.any())
        any_axis += any(detectable.values())
        for name, found in detectable.items():
            per_axis[name] += found
    # Family-wise: one false claim anywhere in a study counts.
    assert any_cell / STUDIES <= TOLERANCE, any_cell
    assert any_axis / STUDIES <= TOLERANCE, any_axis
    assert all(count / STUDIES <= TOLERANCE for count in per_axis.values()), per_axis


def test_a_planted_effect_is_detected() -> None:
    # The largest weight decay costs 0.6 logits: about 1.8 points of accuracy.
    rng = np.random.default_rng(1)
    found, false, worse = 0, 0, 0
    for _ in range(50):
        cells = simulated_study(rng, planted=0.6)
        separated, detectable = judged(cells, rng)
        found += detectable["weight_decay"]
        false += detectable["dropout"] + detectable["batch_size"]
        heavy = [cell.params["weight_decay"] == AXES["weight_decay"][-1] for cell in cells]
        worse += bool(separated[heavy].any())
        # No cell of the planted value is ever the one called best.
        assert not heavy[0]
    assert found / 50 >= 0.9, found
    assert false / 100 <= TOLERANCE, false  # the axes without an effect stay quiet
    # One cell of two seeds is far noisier than an axis' six cells: a single planted cell
    # is separated from the best in some studies only.
    assert worse > 0, worse


def test_identical_settings_under_different_labels_are_never_told_apart() -> None:
    rng = np.random.default_rng(2)
    runs = simulated_runs(rng, np.arange(400), 0.0, 2)
    cells = [
        CellRuns(str(wd), {"weight_decay": wd}, (0, 1), runs)  # the same runs, bit for bit
        for wd in (0.0, 1e-4, 1e-3)
    ]
    separated, detectable = judged_one_axis(cells, rng)
    assert not separated.any()
    assert detectable == {"weight_decay": False}


def judged_one_axis(
    cells: list[CellRuns], rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, bool]]:
    model = NoiseModel.of([cell.correct for cell in cells])
    means = model.draws(rng, 500)
    separated, _ = worse_than(model, 0, critical_value(model, rng, 500))
    values = {"weight_decay": [float(cell.params["weight_decay"]) for cell in cells]}
    tests = axis_tests(cells, means, values, rng, permutations=500)
    assert tests[0].p_value == 1.0
    return separated, {test.name: test.detectable for test in tests}


def test_the_seeds_it_says_it_would_take_do_separate_two_cells() -> None:
    # Two cells 0.8 points apart on 400 examples with 2 seeds: rarely separated yet.
    rng = np.random.default_rng(3)
    split = rng.choice(len(LOGITS), 400, replace=False)

    def pair(seeds: int) -> list[CellRuns]:
        return [
            CellRuns(name, {}, tuple(range(seeds)), simulated_runs(rng, split, shift, seeds))
            for name, shift in (("best", 0.0), ("worse", -0.3))
        ]

    def separates(cells: list[CellRuns]) -> tuple[bool, float]:
        model = NoiseModel.of([cell.correct for cell in cells])
        critical = critical_value(model, rng, 500)
        return bool(worse_than(model, 0, critical)[0][1]), critical

    plans = []
    for _ in range(20):
        cells = pair(2)
        if cells[1].mean >= cells[0].mean:
            continue
        _, critical = separates(cells)
        plan = separation(cells[0], cells[1], critical)
        assert plan.detectable is not None and plan.detectable > 0
        if plan.seeds_needed is not None:
            plans.append(plan.seeds_needed)
    assert plans, "no plan named a seed count"
    seeds = int(np.median(plans))
    assert seeds > 2
    hits = [separates(pair(seeds))[0] for _ in range(20)]
    assert np.mean(hits) >= 0.6, (seeds, hits)  # planned for 80%, from a noisy plan


def test_the_paired_test_difference_covers_the_true_one() -> None:
    rng = np.random.default_rng(4)
    examples = np.arange(len(LOGITS))
    truth = float(
        (1 / (1 + np.exp(-LOGITS)) - 1 / (1 + np.exp(-(LOGITS - 0.6)))).mean()
    )  # population difference of the two settings, seed shifts aside
    covered, beyond = [], []
    for _ in range(100):
        split = rng.choice(examples, 1000, replace=False)
        chosen, baseline = simulated_runs(rng, split, 0.0, 3), simulated_runs(rng, split, -0.6, 3)
        test = paired_difference(chosen, baseline, rng, resamples=500)
        covered.append(test.low <= truth <= test.high)
        beyond.append(test.beyond_noise)
    assert 0.8 <= np.mean(covered) <= 1.0, np.mean(covered)
    assert np.mean(beyond) >= 0.5


def test_paired_runs_must_match() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        paired_difference(np.ones((2, 3), bool), np.ones((3, 3), bool), np.random.default_rng())


def test_racing_never_drops_a_cell_the_full_seed_grid_keeps() -> None:
    # Full grids of 6 seeds a cell, 12 cells from 0 to 4 points behind; racing replays
    # them from 2 seeds, 2 more a round, on the same runs (a seed's run is the same
    # either way). Every cell the full grid keeps as indistinguishable from the best
    # must have raced to the end (all 6 seeds): racing never left it behind.
    rng = np.random.default_rng(6)
    ratios = []
    for _ in range(24):
        split = rng.choice(len(LOGITS), 400, replace=False)
        full = []
        for index, shift in enumerate(np.linspace(0.0, -1.5, 12)):
            runs = simulated_runs(rng, split, float(shift), 6)
            full.append(CellRuns(str(index), {}, tuple(range(6)), runs))
        full.sort(key=lambda cell: -cell.mean)
        shown = dict.fromkeys((cell.key for cell in full), 2)
        while True:
            visible = sorted(
                (
                    CellRuns(c.key, {}, c.seeds[: shown[c.key]], c.correct[: shown[c.key]])
                    for c in full
                ),
                key=lambda cell: -cell.mean,
            )
            more = race_round(visible, step=2, max_seeds=6)
            if not more:
                break
            for key, count in more.items():
                shown[key] += count
        left_behind = {key for key in _kept(full) if shown[key] < 6}
        assert not left_behind
        ratios.append(sum(shown.values()) / (6 * len(full)))
    assert np.mean(ratios) < 0.9  # and it saves runs


def _kept(cells: list[CellRuns]) -> list[str]:
    _, _, separated = best_set(cells, np.random.default_rng(0))
    return [cell.key for cell, worse in zip(cells, separated, strict=True) if not worse]


def test_an_axis_whose_values_never_share_the_other_axes_is_not_testable() -> None:
    # Weight decay and dropout change together: no two weight decays share a dropout.
    rng = np.random.default_rng(7)
    split = rng.choice(len(LOGITS), 400, replace=False)
    cells = [
        CellRuns(str(wd), {"weight_decay": wd, "dropout": dropout}, (0, 1),
                 simulated_runs(rng, split, 0.0, 2))
        for wd, dropout in ((0.0, 0.0), (1e-3, 0.1), (1e-2, 0.2))
    ]  # fmt: skip
    model = NoiseModel.of([cell.correct for cell in cells])
    values = {name: [float(cell.params[name]) for cell in cells] for name in cells[0].params}
    tests = axis_tests(cells, model.draws(rng, 200), values, rng, permutations=100)
    assert [test.name for test in tests] == ["weight_decay", "dropout"]
    assert all(np.isnan(test.p_value) and not test.detectable for test in tests)
