"""How the max LR follows the batch size: a fit of ``max_lr = c * B**k`` to stage 1's answers.

The linear rule (Goyal et al. 2017; Smith and Le 2018: the SGD noise scale is
``lr * N / B``) says ``k = 1``; the square-root rule (Hoffer et al. 2017; Malladi et
al. 2022 for Adam) says ``k = 0.5``. Fitting ``k`` to the range tests of three or
more batch sizes tests both on the data at hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LEVEL = 0.9
"""The confidence of the interval on ``k``."""

RULES = {"linear": 1.0, "sqrt": 0.5}
"""The scaling rules the fit is compared with, by their exponent ``k``."""


@dataclass(frozen=True)
class BatchScaling:
    """``log max_lr = log c + k log B``, fitted by least squares to one LR per batch size.

    ``low`` and ``high`` bound ``k`` at :data:`LEVEL` (Student t with ``n - 2``
    degrees of freedom, the scatter of the points about the line as their noise:
    with three batch sizes one degree of freedom, so the interval is wide). They are
    NaN with two batch sizes, which fix a line exactly and say nothing of its noise,
    and NaN when the points lie exactly on a line (no scatter to read a noise from: a
    zero-width interval would claim a certainty the range tests do not have).
    """

    k: float
    low: float
    high: float
    intercept: float  # log c, natural log
    batch_sizes: tuple[int, ...]
    max_lrs: tuple[float, ...]
    level: float = LEVEL

    def predict(self, batch_size: int) -> float:
        """The fitted max LR at ``batch_size``."""
        return math.exp(self.intercept + self.k * math.log(batch_size))

    def consistent_with(self, k: float) -> bool | None:
        """Whether exponent ``k`` lies inside the interval (``None`` without one)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return None
        return self.low <= k <= self.high

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (NaN bounds as ``None``), with the two rules' verdicts."""
        values = asdict(self)
        for name in ("low", "high"):
            values[name] = None if math.isnan(values[name]) else values[name]
        values["batch_sizes"] = list(self.batch_sizes)
        values["max_lrs"] = list(self.max_lrs)
        values["rules"] = {name: self.consistent_with(k) for name, k in RULES.items()}
        return values


def fit_batch_scaling(max_lrs: Mapping[int, float], level: float = LEVEL) -> BatchScaling | None:
    """Fit ``max_lr = c * B**k`` to ``{batch size: max LR}``; ``None`` for fewer than 2 sizes.

    Raises:
        ValueError: a batch size below 1 or a max LR that is not positive and finite.
    """
    sizes = sorted(max_lrs)
    if len(sizes) < 2:
        return None
    lrs = [float(max_lrs[size]) for size in sizes]
    if any(size < 1 for size in sizes) or not all(math.isfinite(lr) and lr > 0 for lr in lrs):
        raise ValueError(f"batch sizes must be >= 1 and LRs positive, got {dict(max_lrs)}")
    x, y = np.log(np.asarray(sizes, dtype=float)), np.log(np.asarray(lrs))
    centred = x - x.mean()
    k = float(centred @ (y - y.mean()) / (centred @ centred))
    intercept = float(y.mean() - k * x.mean())
    low = high = math.nan
    dof = len(sizes) - 2
    if dof > 0:
        from scipy.stats import t

        residuals = y - (intercept + k * x)
        scatter = float(residuals @ residuals)
        if scatter > 1e-12 * float(y @ y):
            standard_error = math.sqrt(scatter / dof / float(centred @ centred))
            half = float(t.ppf(0.5 + level / 2, dof)) * standard_error
            low, high = k - half, k + half
    return BatchScaling(k, low, high, intercept, tuple(sizes), tuple(lrs), level)
