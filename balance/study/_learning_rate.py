"""Stage 1: one max LR per batch size, fixed before any regularizer is swept."""

from __future__ import annotations

import math

import optuna

from balance import record
from balance.config import StudyConfig
from balance.gradient_noise import NoiseScale, measure_noise_scale
from balance.models import ModelFactory
from balance.objects import TrainingData
from balance.range_test import RangeTestResult, fit_batch_scaling
from balance.record import StageOne
from balance.train import choose_max_lr


def fit_max_lrs(
    config: StudyConfig,
    data: TrainingData,
    *,
    threads: int | None = None,
    model: ModelFactory | None = None,
) -> tuple[dict[int, float], dict[int, RangeTestResult]]:
    """Max LR for every batch size of the study, and the range tests behind them.

    ``range-test`` runs one test per batch size (the LR must follow the batch
    size), each confirmed by its probes (:func:`balance.train.choose_max_lr`).
    ``fit`` runs the same tests and then gives each size the LR of the line
    ``max_lr = c * B**k`` fitted through them (:func:`balance.range_test.fit_batch_scaling`),
    so one noisy test does not set its size's LR alone.
    ``linear`` and ``sqrt`` run one test at ``train.batch_size`` and scale
    from it; ``none`` uses that LR for every size. A ``train.max_lr`` given in the
    study file replaces the range test: it is the LR at ``train.batch_size``.
    ``model``: a factory in place of ``train.model`` (:mod:`balance.objects`).
    """
    base = config.train.model_copy(
        update={"threads": config.train.threads if threads is None else threads}
    )
    sizes = config.batch_sizes
    tests: dict[int, RangeTestResult] = {}
    if base.max_lr is None and config.lr_scaling in ("range-test", "fit"):
        for size in sizes:
            sized = base.model_copy(update={"batch_size": size})
            tests[size] = choose_max_lr(sized, config.range_test, data=data, model=model)
        measured = {size: tests[size].max_lr for size in sizes}
        fit = fit_batch_scaling(measured) if config.lr_scaling == "fit" else None
        if fit is None:
            return measured, tests
        return {size: fit.predict(size) for size in sizes}, tests
    if base.max_lr is not None:
        reference = base.max_lr
    else:
        tests[base.batch_size] = choose_max_lr(base, config.range_test, data=data, model=model)
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


def fix_max_lrs(
    study: optuna.Study,
    config: StudyConfig,
    data: TrainingData,
    threads: int | None = None,
    model: ModelFactory | None = None,
) -> StageOne:
    """Stage 1, once per study: run the range tests, measure the gradient noise scale at
    each batch size, and store the curves, the scales and the LRs.

    A study that already has them (a resumed one) returns the stored ones.
    """
    stored = StageOne.from_study(study)
    if stored.done:
        return stored
    max_lrs, tests = fit_max_lrs(config, data, threads=threads, model=model)
    scales = measure_noise_scales(config, data, max_lrs, threads=threads, model=model)
    stage = StageOne(max_lrs=max_lrs, range_tests=tests, noise_scales=scales)
    record.save_stage_one(study, stage)
    return stage


def measure_noise_scales(
    config: StudyConfig,
    data: TrainingData,
    max_lrs: dict[int, float],
    *,
    threads: int | None = None,
    model: ModelFactory | None = None,
) -> dict[int, NoiseScale]:
    """``B_simple`` per batch size over the first epoch of the run a trial trains there
    (the base setting at that size's max LR); none when ``range_test.noise_scale`` is off.

    A size whose first epoch diverges, or whose batch cannot be halved, has no entry.
    """
    if not config.range_test.noise_scale:
        return {}
    scales = {}
    base = config.train.model_copy(
        update={"threads": config.train.threads if threads is None else threads}
    )
    for size, lr in sorted(max_lrs.items()):
        try:
            sized = base.model_copy(update={"batch_size": size, "max_lr": lr})
            scales[size] = measure_noise_scale(sized, data, max_lr=lr, model=model)
        except ValueError:
            continue  # the step diverged or the batch holds one example: nothing to measure
    return scales
