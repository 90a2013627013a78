"""Stage 1: one max LR per batch size, fixed before any regularizer is swept."""

from __future__ import annotations

import math

from balance.config import StudyConfig
from balance.data import Dataset
from balance.range_test import RangeTestResult, find_max_lr
from balance.study._space import batch_sizes


def fit_max_lrs(
    config: StudyConfig, data: Dataset, *, threads: int | None = None
) -> tuple[dict[int, float], dict[int, RangeTestResult]]:
    """Max LR for every batch size of the study, and the range tests behind them.

    ``range-test`` runs one test per batch size (the LR must follow the batch
    size). ``linear`` and ``sqrt`` run one test at ``train.batch_size`` and scale
    from it; ``none`` uses that LR for every size. A ``train.max_lr`` given in the
    study file replaces the range test: it is the LR at ``train.batch_size``.
    """
    base = config.train.model_copy(update={"threads": threads or config.train.threads})
    sizes = batch_sizes(config.search, base)
    tests: dict[int, RangeTestResult] = {}
    if base.max_lr is None and config.lr_scaling == "range-test":
        for size in sizes:
            sized = base.model_copy(update={"batch_size": size})
            tests[size] = find_max_lr(sized, config.range_test, data=data)
        return {size: tests[size].max_lr for size in sizes}, tests
    if base.max_lr is not None:
        reference = base.max_lr
    else:
        tests[base.batch_size] = find_max_lr(base, config.range_test, data=data)
        reference = tests[base.batch_size].max_lr
    return {
        size: scale_lr(reference, base.batch_size, size, config.lr_scaling) for size in sizes
    }, tests


def scale_lr(lr: float, from_size: int, to_size: int, rule: str) -> float:
    """Scale an LR between batch sizes: ``linear``, ``sqrt``, or unchanged."""
    ratio = to_size / from_size
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    return lr
