"""The LR as a regularizer: the best weight decay at each LR level and how it moves, the
cells in the product coordinate lr x wd, and the batch-size study (accuracy against time).

Smith (2018) says a larger LR regularizes, so the best weight decay should fall as the
LR grows; for normalized nets the product lr x wd is what counts (Li, Lyu and Arora
2020), and for decoupled decay the time scale tau = 1 / (lr x wd) steps, in epochs,
stays about constant as batch and data change (Wang and Aitchison 2025). Every figure
here carries the noise of :mod:`balance.analysis._intervals`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from balance.analysis._comparisons import CellRuns
from balance.analysis._intervals import LEVEL, RESAMPLES, NoiseModel, percentile_interval
from balance.analysis._noise import NoiseAnalysis, best_set, cell_runs
from balance.cells import distinct_runs
from balance.record import StudyRecord

TREND_UNIT = "weight-decay grid steps per doubling of the LR"
"""The unit of :class:`Trend`: positions in the sorted weight-decay grid, per factor 2 of LR."""


class LevelBest(NamedTuple):
    """The best cell at one LR level of one batch size, and the weight decays tied with it.

    ``tied`` lists the weight decays of this level's cells that are not separated from
    its best (the best's included): the uncertainty of the best weight decay.
    """

    batch_size: int
    lr_multiplier: float
    max_lr: float
    weight_decay: float
    dropout: float
    mean: float
    low: float
    high: float
    tied: tuple[float, ...]


class Trend(NamedTuple):
    """How the best weight decay moves as the LR grows, in :data:`TREND_UNIT`.

    ``slope`` is the least-squares slope of the best weight decay's grid position on
    log2 of the LR multiplier, pooled within batch sizes; ``low`` and ``high`` are its
    interval at ``level`` over draws of every cell's mean from the noise model (each draw
    picks its own best per level). ``direction`` is ``falls`` or ``rises`` when the
    interval excludes 0, else ``stays`` (no detectable move).
    """

    slope: float
    low: float
    high: float
    level: float
    direction: str


class LrTradeoff(NamedTuple):
    """The trade-off of a study that swept ``lr_multiplier`` against ``weight_decay``."""

    levels: list[LevelBest]
    trend: Trend
    cells: pd.DataFrame  # per cell: setting, peak LR, mean, interval, lr_wd, tau, steps/epoch
    decay: str  # "decoupled" (adamw) or "coupled" (L2: sgd, adam)

    def to_summary(self) -> dict[str, Any]:
        """The trade-off as ``summary.json``'s ``lr_tradeoff`` (strict JSON)."""
        return {
            "best_weight_decay": [level._asdict() for level in self.levels],
            "trend": {**self.trend._asdict(), "unit": TREND_UNIT},
            "decay": self.decay,
        }


def _levels(cells: Sequence[CellRuns]) -> dict[tuple[int, float], list[int]]:
    """Cell indices per (batch size, LR multiplier), in the cells' order (best first)."""
    levels: dict[tuple[int, float], list[int]] = {}
    for index, cell in enumerate(cells):
        key = (int(cell.params["batch_size"]), float(cell.params["lr_multiplier"]))
        levels.setdefault(key, []).append(index)
    return dict(sorted(levels.items()))


def _pooled_slope(levels: dict[tuple[int, float], list[int]], positions: np.ndarray) -> np.ndarray:
    """Slope of ``positions`` (draws x levels) on log2 multiplier, pooled within sizes."""
    keys = list(levels)
    numerator = np.zeros(positions.shape[0])
    denominator = 0.0
    for size in sorted({size for size, _ in keys}):
        columns = [i for i, (s, _) in enumerate(keys) if s == size]
        x = np.log2([keys[i][1] for i in columns])
        x = x - x.mean()
        y = positions[:, columns]
        numerator += (y - y.mean(axis=1, keepdims=True)) @ x
        denominator += float(x @ x)
    return numerator / denominator


def weight_decay_trend(
    cells: Sequence[CellRuns],
    rng: np.random.Generator,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Trend | None:
    """How the best weight decay moves with the LR multiplier, with its interval.

    ``cells`` come best first (:func:`balance.analysis.cell_runs`) and name
    ``batch_size``, ``lr_multiplier`` and ``weight_decay`` in their params. ``None``
    when no batch size has two LR levels or the grid has one weight decay.
    """
    levels = _levels(cells)
    decays = sorted({float(cell.params["weight_decay"]) for cell in cells})
    sizes = [size for size, _ in levels]
    if len(decays) < 2 or all(sizes.count(size) < 2 for size in set(sizes)):
        return None
    position = np.array([decays.index(float(cell.params["weight_decay"])) for cell in cells])
    draws = NoiseModel.of([cell.correct for cell in cells]).draws(rng, resamples)
    best_observed = np.array([[position[members[0]] for members in levels.values()]])
    best_drawn = np.column_stack(
        [position[np.array(members)[np.argmax(draws[:, members], axis=1)]]
         for members in levels.values()]
    )  # fmt: skip
    slope = float(_pooled_slope(levels, best_observed.astype(float))[0])
    low, high = percentile_interval(_pooled_slope(levels, best_drawn.astype(float)), level)
    direction = "falls" if high < 0 else "rises" if low > 0 else "stays"
    return Trend(slope, low, high, level, direction)


def _steps_per_epoch(record: StudyRecord, key: str) -> float:
    runs = distinct_runs(record.trials, key)
    return statistics.fmean(run.steps for run in runs) / record.config.train.epochs


def lr_tradeoff(
    record: StudyRecord, noise: NoiseAnalysis, *, resamples: int = RESAMPLES, seed: int = 0
) -> LrTradeoff | None:
    """The LR / weight decay trade-off of a study; ``None`` unless it swept both as lists.

    Intervals and ties come from ``noise`` (:func:`balance.analysis.analyse_noise`) and
    from :func:`best_set` within each level. Seeded: the same record, the same numbers.
    """
    search = record.config.search
    if not (isinstance(search.lr_multiplier, list) and isinstance(search.weight_decay, list)):
        return None
    cells = cell_runs(record)
    if not cells:
        return None
    rng = np.random.default_rng(seed)
    trend = weight_decay_trend(cells, rng, resamples)
    if trend is None:
        return None
    estimates = {cell.key: cell for cell in noise.cells}
    max_lrs = record.stage_one.max_lrs
    rows = []
    for cell in cells:
        params = cell.params
        peak = max_lrs[int(params["batch_size"])] * float(params["lr_multiplier"])
        product = peak * float(params["weight_decay"])
        steps = _steps_per_epoch(record, cell.key)
        rows.append(
            {
                **{name: params[name] for name in ("batch_size", "lr_multiplier")},
                **{name: params[name] for name in ("weight_decay", "dropout")},
                "max_lr": peak,
                "mean": cell.mean,
                "low": estimates[cell.key].low,
                "high": estimates[cell.key].high,
                "lr_wd": product,
                "tau_epochs": math.inf if product == 0 else 1.0 / (product * steps),
                "steps_per_epoch": steps,
            }
        )
    frame = pd.DataFrame(rows)
    levels = []
    for (size, multiplier), members in _levels(cells).items():
        level_cells = [cells[index] for index in members]
        _, _, worse = best_set(level_cells, rng, resamples)
        best = frame.iloc[members[0]]
        kept = [c for c, w in zip(level_cells, worse, strict=True) if not w]
        tied = sorted({float(c.params["weight_decay"]) for c in kept})
        levels.append(
            LevelBest(
                size,
                multiplier,
                float(best["max_lr"]),
                float(best["weight_decay"]),
                float(best["dropout"]),
                float(best["mean"]),
                float(best["low"]),
                float(best["high"]),
                tuple(tied),
            )
        )
    decay = "decoupled" if record.config.train.optimizer == "adamw" else "coupled"
    return LrTradeoff(levels, trend, frame, decay)


def tradeoff_sentence(tradeoff: LrTradeoff) -> str:
    """The trade-off in one sentence: whether the best weight decay falls, stays or rises."""
    trend = tradeoff.trend
    level = f"{100 * trend.level:.0f}%"
    moved = {
        "falls": "falls as the LR grows, as Smith's balance predicts",
        "rises": "rises as the LR grows, against Smith's balance",
        "stays": "shows no detectable move as the LR grows",
    }[trend.direction]
    sizes = sorted({lvl.batch_size for lvl in tradeoff.levels})
    multipliers = sorted({lvl.lr_multiplier for lvl in tradeoff.levels})
    series = "; ".join(
        f"batch {size}: "
        + ", ".join(f"{lvl.weight_decay:g}" for lvl in tradeoff.levels if lvl.batch_size == size)
        for size in sizes
    )
    return (
        f"The best weight decay {moved}: {trend.slope:+.2f} {TREND_UNIT} ({level} interval "
        f"{trend.low:+.2f} to {trend.high:+.2f}). Best weight decay at LR "
        f"{', '.join(f'x{m:g}' for m in multipliers)}: {series} (ties in the table below)."
    )


class BatchSizeBest(NamedTuple):
    """One batch size's best cell: its accuracy with interval, and what a run of it cost."""

    batch_size: int
    params: dict[str, Any]
    mean: float
    low: float
    high: float
    indistinguishable: bool  # not separated from the study's best
    train_time: float  # seconds per run, mean over its seeds
    steps: float  # optimizer steps per run (equal epochs)


def batch_size_study(record: StudyRecord, noise: NoiseAnalysis) -> list[BatchSizeBest]:
    """Per batch size, its best cell (:attr:`NoiseAnalysis.cells` order) and its cost."""
    found: dict[int, BatchSizeBest] = {}
    for cell in noise.cells:
        size = int(cell.params["batch_size"])
        if size in found:
            continue
        runs = distinct_runs(record.trials, cell.key)
        times = [run.train_time for run in runs if run.train_time is not None]
        found[size] = BatchSizeBest(
            size,
            cell.params,
            cell.mean,
            cell.low,
            cell.high,
            cell.indistinguishable,
            statistics.fmean(times) if times else math.nan,
            statistics.fmean(run.steps for run in runs),
        )
    return [found[size] for size in sorted(found)]


def batch_size_sentence(results: Sequence[BatchSizeBest]) -> str | None:
    """Smith's advice tested: does the largest batch size match the best, and at what cost?"""
    if len(results) < 2:
        return None
    largest = results[-1]
    best = max(results, key=lambda result: result.mean)
    other = best if best is not largest else results[0]
    cost = (
        f"{largest.train_time:.1f} s and {largest.steps:.0f} steps a run against "
        f"{other.train_time:.1f} s and {other.steps:.0f} at batch {other.batch_size}"
    )
    if largest is best:
        return (
            f"The largest batch size, {largest.batch_size}, gives the best cell, "
            f"{largest.mean:.3f} [{largest.low:.3f}, {largest.high:.3f}], in {cost}."
        )
    judged = (
        "cannot be told apart from the best"
        if largest.indistinguishable
        else "is worse than the best beyond noise"
    )
    return (
        f"The largest batch size, {largest.batch_size}, reaches {largest.mean:.3f} "
        f"[{largest.low:.3f}, {largest.high:.3f}] and {judged} ({best.mean:.3f} at batch "
        f"{best.batch_size}), in {cost}."
    )
