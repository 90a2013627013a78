"""A cell's mean accuracy with an interval that counts seeds and the finite evaluation split.

A cell's runs are a matrix of correctness: seeds x evaluation examples (the same
examples for every seed and every cell: the split is fixed). Its mean accuracy
varies for two reasons, and the variance of cells' means (and of their
differences) is the sum of two parts:

- **The seeds** (initialisation, data order, dropout): on this split, a cell's mean
  over n seeds varies by its seed variance over n. Two seeds alone say almost
  nothing about a spread, and cells differ (one near divergence spreads ten times
  wider), so each cell's variance is shrunk toward the study's typical one
  (:func:`seed_variances`).
- **The split** (which examples it happened to hold): the covariance over examples
  of the cells' per-example correctness, averaged over seeds, divided by the
  number of examples. Cells share the examples, so their comparison is paired: an
  example every cell gets right adds nothing to a difference. The per-example
  averages also carry the seeds' noise, which the seed part already counts: that
  share is subtracted from each cell's own variance (a one-seed cell cannot tell
  it apart and keeps it, so in a study of mixed seed counts it counts that noise
  twice: conservative).

Means are drawn with that covariance (:class:`NoiseModel`): the split's part
normal, the seeds' part t-distributed with the degrees of freedom its variance
was read with; intervals are percentiles of the draws. The method assumes seeds
and examples are exchangeable draws and means roughly normal. A
study with one seed per cell has no seed part: its intervals count the split and
each run's noise per example, not a seed's shift of the whole model, and are too
narrow, and no cell is called worse than the best. On simulated cells
(tests/test_intervals.py) the 90% interval covers the population accuracy near
its level with 3 and 5 seeds of 400 examples (tested; a cell alone with 2 seeds
gets t tails of 1 degree of freedom: wide, as it should be).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

LEVEL = 0.9
"""The confidence level of every interval balance reports (two-sided)."""

RESAMPLES = 2000

PRIOR_DF = 4.0
"""How many degrees of freedom the study's typical seed variance weighs in each cell's own."""


class Interval(NamedTuple):
    """A mean accuracy and its two-sided percentile interval at ``level``."""

    mean: float
    low: float
    high: float
    level: float


def correctness_matrix(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Seeds x examples of booleans; every row must cover the same examples."""
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(f"seed runs measured different numbers of examples: {sorted(lengths)}")
    return np.vstack([np.asarray(row, dtype=bool) for row in rows])


def shrunk_variances(own: np.ndarray, df: np.ndarray, prior_df: float) -> np.ndarray:
    """Cells' own seed variances (``df`` degrees of freedom each) shrunk toward the typical.

    The typical variance is the median over cells with ``df > 0``, scaled to a mean
    by the chi-square median (Wilson-Hilferty); it weighs ``prior_df`` against each
    cell's own ``df``. A cell with ``df == 0`` gets the typical variance. ``own``
    may hold one row of cells per draw (the last axis is the cells').
    """
    measured = df > 0
    if not measured.any():
        return np.zeros_like(own)
    middle = float(np.median(df[measured]))
    typical = np.median(own[..., measured], axis=-1, keepdims=True) / (1 - 2 / (9 * middle)) ** 3
    weights = prior_df + df
    mine = np.where(measured, own, 0.0)
    return np.where(
        weights > 0, (prior_df * typical + df * mine) / np.where(weights > 0, weights, 1), 0.0
    )


def seed_variances(cells: Sequence[np.ndarray], prior_df: float = PRIOR_DF) -> np.ndarray:
    """Each cell's seed variance of its accuracy, shrunk toward the study's typical one.

    A cell's unbiased variance over its seeds is averaged with the typical variance
    (:func:`shrunk_variances`), weighted ``prior_df`` to its own ``seeds - 1``. A
    one-seed cell gets the typical variance; with no cell of two seeds there is no
    seed part (zeros), and a cell alone keeps its own variance.
    """
    df = np.array([len(cell) - 1 for cell in cells], dtype=float)
    own = np.array(
        [
            float(np.asarray(cell).mean(axis=1).var(ddof=1)) if len(cell) > 1 else 0.0
            for cell in cells
        ]
    )
    return shrunk_variances(own, df, prior_df if len(cells) > 1 else 0.0)


def split_covariance(cells: Sequence[np.ndarray]) -> np.ndarray:
    """Cells x cells covariance of their means from the examples the split holds.

    The covariance over examples of seed-averaged correctness, over the number of
    examples; each cell's diagonal loses the noise its seed average carries (the
    mean over examples of the per-example variance over seeds, over seeds), and
    the result is kept positive semi-definite.
    """
    examples = {np.asarray(cell).shape[1] for cell in cells}
    if len(examples) != 1:
        raise ValueError(f"cells measured different numbers of examples: {sorted(examples)}")
    count = examples.pop()
    averages = np.vstack([np.asarray(cell, dtype=float).mean(axis=0) for cell in cells])
    covariance = np.atleast_2d(np.cov(averages, ddof=1)) / count
    for index, cell in enumerate(cells):
        seeds = len(cell)
        if seeds > 1:
            noise = np.asarray(cell, dtype=float).var(axis=0, ddof=1).mean() / seeds
            covariance[index, index] -= noise / count
    values, vectors = np.linalg.eigh(covariance)
    return (vectors * np.clip(values, 0.0, None)) @ vectors.T


@dataclass(frozen=True)
class NoiseModel:
    """The noise of a study's cell means: the split's covariance and each cell's seed part.

    ``seed_df`` is the degrees of freedom of each cell's seed variance: its own
    ``seeds - 1`` plus ``prior_df`` for the typical variance it was shrunk toward
    (0: no seed part).
    """

    observed: np.ndarray
    split: np.ndarray
    seed_variance: np.ndarray
    seeds: np.ndarray
    own_df: np.ndarray
    prior_df: float

    @classmethod
    def of(cls, cells: Sequence[np.ndarray], prior_df: float = PRIOR_DF) -> NoiseModel:
        """The model of cells given as seeds x examples correctness matrices."""
        seeds = np.array([len(cell) for cell in cells], dtype=float)
        variances = seed_variances(cells, prior_df)
        shrunk = len(cells) > 1 and bool((seeds > 1).any())
        return cls(
            observed=np.array([np.asarray(cell).mean() for cell in cells]),
            split=split_covariance(cells),
            seed_variance=variances,
            seeds=seeds,
            own_df=seeds - 1,
            prior_df=prior_df if shrunk else 0.0,
        )

    @property
    def seeds_measured(self) -> bool:
        """Whether some cell has two or more seeds: the seed noise has been read at all."""
        return bool((self.own_df > 0).any())

    @property
    def seed_df(self) -> np.ndarray:
        """Degrees of freedom of each cell's seed variance (0 where it has none)."""
        return np.where(self.seed_variance > 0, self.own_df + self.prior_df, 0.0)

    def draws(
        self, rng: np.random.Generator, resamples: int = RESAMPLES, *, heavy: bool = True
    ) -> np.ndarray:
        """``resamples`` x cells draws of the means: the split's part normal, the seeds' t.

        The seed part is t-distributed with :attr:`seed_df` degrees of freedom: a
        variance read off few seeds may be too small, and the t's tails say so.
        ``heavy=False`` draws it normal, as if the variances were known.
        """
        values, vectors = np.linalg.eigh(self.split)
        root = vectors * np.sqrt(np.clip(values, 0.0, None))
        split = rng.standard_normal((resamples, len(self.observed))) @ root.T
        scale = np.sqrt(self.seed_variance / self.seeds)
        seed = np.zeros_like(split)
        for index, df in enumerate(self.seed_df):
            if df > 0:
                shape = rng.standard_t(df, resamples) if heavy else rng.standard_normal(resamples)
                seed[:, index] = scale[index] * shape
        return self.observed + split + seed

    def pair_error(self, first: int) -> np.ndarray:
        """The standard error of ``observed[first] - observed[c]``, for every cell ``c``."""
        diagonal = np.diag(self.split)
        split = diagonal[first] + diagonal - 2 * self.split[first]
        seed = self.seed_variance / self.seeds
        return np.sqrt(np.clip(split, 0.0, None) + seed[first] + seed)

    def redrawn_seed_variances(self, rng: np.random.Generator, resamples: int) -> np.ndarray:
        """``resamples`` x cells seed variances as the study could have read them.

        Each cell's variance is redrawn as a scaled chi-square with :attr:`seed_df`
        degrees of freedom, the moderated variance's (its own ``seeds - 1`` plus the
        prior's, as limma treats a shrunk variance): the uncertainty that makes a
        ratio to an estimated error heavier-tailed than a normal.
        """
        redrawn = np.tile(self.seed_variance, (resamples, 1))
        for index, df in enumerate(self.seed_df):
            if df > 0:
                redrawn[:, index] *= rng.chisquare(df, resamples) / df
        return redrawn


def resampled_means(
    cells: Sequence[np.ndarray], rng: np.random.Generator, resamples: int = RESAMPLES
) -> np.ndarray:
    """``resamples`` x cells draws of the cells' mean accuracies (:meth:`NoiseModel.draws`)."""
    return NoiseModel.of(cells).draws(rng, resamples)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The two-sided percentile interval of drawn ``values`` at ``level``."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def cell_interval(
    rows: Sequence[np.ndarray],
    *,
    level: float = LEVEL,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Interval:
    """The cell's mean accuracy over its seed runs, with its interval."""
    correct = correctness_matrix(rows)
    means = resampled_means([correct], np.random.default_rng(seed), resamples)[:, 0]
    means = np.clip(means, 0.0, 1.0)  # an accuracy: the normal's tails stop at 0 and 1
    return Interval(float(correct.mean()), *percentile_interval(means, level), level)
