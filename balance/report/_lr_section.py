"""The report's "LR as a regularizer" section: the best weight decay per LR level, the LR x
weight decay maps, the batch-size scaling fit, the gradient noise scale and the batch-size
study. Each part appears only where the study measured what it needs."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from balance.analysis import (
    NoiseAnalysis,
    batch_size_sentence,
    batch_size_study,
    lr_tradeoff,
    tradeoff_sentence,
)
from balance.range_test import fit_batch_scaling
from balance.record import StudyRecord
from balance.report import tradeoff_plots
from balance.report._sections import _html_table, _lr, _picture

DECAY_WORDS = {
    "decoupled": "AdamW's decay is decoupled: each step shrinks the weights by lr x wd, so "
    "tau = 1 / (lr x wd) steps is the decay's memory, here read at the peak LR (the 1cycle "
    "average is lower, so the real tau is longer).",
    "coupled": "This study's weight decay is an L2 penalty coupled to the gradient. For SGD "
    "a step still shrinks the weights by lr x wd (by lr x wd / (1 - momentum) once momentum "
    "builds up), so the product keeps its meaning up to that factor; for Adam the penalty's "
    "gradient is divided by the running gradient scale, so lr x wd is only nominal there.",
}


def lr_section(record: StudyRecord, noise: NoiseAnalysis | None) -> dict[str, Any]:
    """Template values of the section (every key present; ``None`` or empty when not shown)."""
    values: dict[str, Any] = {
        "tradeoff_words": [],
        "tradeoff_figure": None,
        "lr_wd_figure": None,
        "tradeoff_table": "",
        "scaling_words": _scaling_words(record),
        "noise_scale_words": _noise_scale_words(record),
        "cost_words": [],
        "cost_figure": None,
    }
    if noise is None:
        return values
    tradeoff = lr_tradeoff(record, noise)
    if tradeoff is not None:
        decays = sorted({float(wd) for wd in tradeoff.cells["weight_decay"]})
        per_epoch = {
            int(size): float(steps)
            for size, steps in tradeoff.cells.groupby("batch_size")["steps_per_epoch"]
            .mean()
            .items()
        }
        values.update(
            tradeoff_words=[tradeoff_sentence(tradeoff), DECAY_WORDS[tradeoff.decay]],
            tradeoff_figure=_picture(
                tradeoff_plots.plot_best_weight_decay(tradeoff.levels, decays),
                "best weight decay at each LR level, per batch size",
            ),
            lr_wd_figure=_picture(
                tradeoff_plots.plot_lr_weight_decay(tradeoff.cells, steps_per_epoch=per_epoch),
                "validation accuracy over LR and weight decay, raw and in the product lr x wd",
            ),
            tradeoff_table=_level_table(tradeoff.levels),
        )
    results = batch_size_study(record, noise)
    if len(results) > 1:
        sentence = batch_size_sentence(results)
        values.update(
            cost_words=[sentence] if sentence else [],
            cost_figure=_picture(
                tradeoff_plots.plot_batch_size_cost(results),
                "each batch size's best validation accuracy against its wall time per run",
            ),
        )
    return values


def _level_table(levels: list[Any]) -> str:
    frame = pd.DataFrame(
        [
            {
                "batch size": level.batch_size,
                "LR multiplier": level.lr_multiplier,
                "peak LR": level.max_lr,
                "best weight decay": level.weight_decay,
                "dropout": level.dropout,
                "val accuracy": level.mean,
                "interval": f"[{level.low:.3f}, {level.high:.3f}]",
                "weight decays tied with it": ", ".join(f"{wd:g}" for wd in level.tied),
            }
            for level in levels
        ]
    )
    formats = {"peak LR": _lr, "LR multiplier": "{:g}".format, "best weight decay": "{:g}".format}
    return _html_table(frame, {**formats, "dropout": "{:g}".format})


def _scaling_words(record: StudyRecord) -> list[str]:
    answers = {size: test.max_lr for size, test in record.stage_one.range_tests.items()}
    fit = fit_batch_scaling(answers)
    if fit is None:
        return []
    points = ", ".join(
        f"{lr:.3g} at {size}" for size, lr in zip(fit.batch_sizes, fit.max_lrs, strict=True)
    )
    if not math.isfinite(fit.low):
        return [
            f"The range tests' max LRs ({points}) put max_lr proportional to B^{fit.k:.2f}; "
            "two batch sizes fix a line but not its noise: test three or more for an interval "
            "on k."
        ]
    level = f"{100 * fit.level:.0f}%"
    rules = []
    for name, k in (("linear", 1.0), ("square-root", 0.5)):
        inside = fit.consistent_with(k)
        rules.append(f"the {name} rule (k = {k:g}) is {'inside' if inside else 'outside'} it")
    used = (
        " Each batch size trains on this line (lr_scaling = 'fit')."
        if record.config.lr_scaling == "fit"
        else ""
    )
    return [
        f"Fitted through the range tests' max LRs ({points}): max_lr proportional to "
        f"B^k with k = {fit.k:.2f} ({level} interval {fit.low:.2f} to {fit.high:.2f}, "
        f"{len(fit.batch_sizes) - 2} degree{'s' if len(fit.batch_sizes) != 3 else ''} of "
        f"freedom); {rules[0]}, {rules[1]}.{used}"
    ]


def _noise_scale_words(record: StudyRecord) -> list[str]:
    scales = record.stage_one.noise_scales
    words = []
    for size, scale in sorted(scales.items()):
        if not math.isfinite(scale.b_simple) or scale.b_simple <= 0:
            words.append(
                f"Batch size {size}: the noise scale could not be resolved over its first "
                f"epoch (|G|^2 or tr(Sigma) not above zero over {scale.steps} steps)."
            )
            continue
        side = (
            "above"
            if size > scale.high
            else "below"
            if size < scale.low
            else "within the interval of"
        )
        high = "unbounded" if not math.isfinite(scale.high) else f"{scale.high:,.0f}"
        words.append(
            f"Batch size {size}: B_simple = {scale.b_simple:,.0f} examples (90% interval "
            f"{scale.low:,.0f} to {high}, over {scale.steps} steps of its first epoch); the "
            f"batch size is {side} it."
        )
    return words
