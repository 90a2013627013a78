"""The LR / weight decay trade-off: the best weight decay's trend holds its level on null
studies and finds a planted trade-off, both ways. Studies are simulated from stored
per-example difficulty as in ``test_comparisons.py``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_comparisons import LOGITS, simulated_runs

from balance.analysis._comparisons import CellRuns
from balance.analysis._tradeoff import weight_decay_trend
from balance.cells import rank

MULTIPLIERS = [0.5, 1.0, 2.0]
WEIGHT_DECAYS = [0.0, 1e-4, 1e-3, 1e-2]
SIZES = [100, 200]


def simulated_tradeoff(
    rng: np.random.Generator, strength: float, best: dict[float, int], seeds: int = 3
) -> list[CellRuns]:
    """3 LR levels x 4 weight decays x 2 batch sizes on 2,000 examples; at each LR level
    the cell at grid position ``best[level]`` is best, the others ``strength`` logits
    times their squared distance from it below."""
    split = rng.choice(len(LOGITS), 2000, replace=False)
    cells = []
    for multiplier, wd, size in itertools.product(MULTIPLIERS, WEIGHT_DECAYS, SIZES):
        shift = -strength * (WEIGHT_DECAYS.index(wd) - best[multiplier]) ** 2
        params = {"weight_decay": wd, "dropout": 0.0, "batch_size": size}
        params["lr_multiplier"] = multiplier
        runs = simulated_runs(rng, split, shift, seeds)
        cells.append(CellRuns(f"{params}", params, tuple(range(seeds)), runs))
    return sorted(cells, key=lambda cell: rank(-cell.mean, len(cell.seeds), cell.params))


FALLING = {0.5: 3, 1.0: 2, 2.0: 1}  # Smith: the larger the LR, the less weight decay


def test_no_trade_off_reads_as_no_detectable_move() -> None:
    # Every cell equal: a trend called at the 90% level would be a false finding; the
    # interval must cover 0 in at least 90% of studies (it is conservative: each draw
    # picks its own best among tied cells).
    rng = np.random.default_rng(0)
    found = [weight_decay_trend(simulated_tradeoff(rng, 0.0, FALLING), rng) for _ in range(100)]
    assert all(trend is not None for trend in found)
    moved = sum(trend.direction != "stays" for trend in found if trend is not None)
    assert moved <= 10, moved


@pytest.mark.parametrize(
    ("best", "direction"), [(FALLING, "falls"), ({0.5: 0, 1.0: 1, 2.0: 3}, "rises")]
)
def test_a_planted_trade_off_is_found_in_its_direction(
    best: dict[float, int], direction: str
) -> None:
    rng = np.random.default_rng(1)
    found = [weight_decay_trend(simulated_tradeoff(rng, 0.2, best), rng) for _ in range(30)]
    hits = sum(trend is not None and trend.direction == direction for trend in found)
    assert hits >= 27, hits  # 90% power at about 4 points per squared grid step
    assert all(trend is not None and trend.low <= trend.slope <= trend.high for trend in found)


def test_one_lr_level_or_one_weight_decay_has_no_trend() -> None:
    rng = np.random.default_rng(2)
    cells = simulated_tradeoff(rng, 0.0, FALLING)
    one_level = [cell for cell in cells if cell.params["lr_multiplier"] == 1.0]
    assert weight_decay_trend(one_level, rng) is None
    one_decay = [cell for cell in cells if cell.params["weight_decay"] == 0.0]
    assert weight_decay_trend(one_decay, rng) is None
