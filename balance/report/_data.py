"""What a report shows, computed apart from drawing: plain frames, dicts and NamedTuples.

Every function here reads a study record (or frames made from one) and returns data; the
figures in :mod:`balance.report.plots` render it and :mod:`balance.report.html`
lays it out. Nothing here draws, prints or writes files.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from balance.analysis import GRID_INDEX, PairedDifference
from balance.config import StudyConfig, TrainConfig
from balance.optim import WEIGHT_DECAY_COUPLING
from balance.range_test import RangeTestResult
from balance.record import StageOne, StudyRecord
from balance.runs import FinalEvaluation
from balance.schedule import ScheduleTrace, schedule_values

TRIAL_TABLE_COLUMNS = [
    "number",
    "state",
    "batch_size",
    "weight_decay",
    "dropout",
    "max_lr",
    "val_accuracy",
    "val_accuracy_std",
    "val_loss",
    "train_loss",
    "gap",
    "seeds_done",
    "steps",
    "duration_s",
    "note",
]


# --------------------------------------------------------------------------- the setup


def weight_decay_words(train: TrainConfig) -> str:
    """How weight decay acts for this optimizer, and on which parameters."""
    coupling = WEIGHT_DECAY_COUPLING[train.optimizer]
    if train.optimizer == "adamw":
        how = "decoupled from the gradient (w -= lr x weight_decay x w)"
    elif train.optimizer == "adam":
        how = "an L2 term added to the gradient (grad += weight_decay x w), rescaled by Adam"
    else:
        how = (
            "an L2 term added to the gradient (grad += weight_decay x w), "
            "so its pull scales with the LR"
        )
    where = (
        "all parameters"
        if train.decay_norm_and_bias
        else "weights with 2+ dimensions only (not biases or norm parameters)"
    )
    return f"{coupling}: {how}; every optimizer step, on {where}"


def policy_words(train: TrainConfig) -> str:
    """The LR policy by name, with the OneCycleLR variant it is (two or three phases)."""
    pct = train.resolved_pct_start
    if train.policy == "smith":
        return (
            f"smith: Smith's three-phase 1cycle (OneCycleLR three_phase=True, linear), "
            f"rise {pct:g} of the steps from max_lr/{train.div_factor:g} to max_lr, fall "
            f"as long, then anneal to 1/{train.final_div_factor:g} of the start; momentum "
            f"{train.max_momentum:g} -> {train.base_momentum:g} -> {train.max_momentum:g}"
        )
    if train.policy == "fastai":
        return (
            f"fastai: two-phase cosine 1cycle (OneCycleLR three_phase=False), rise "
            f"{pct:g} of the steps from max_lr/{train.div_factor:g} to max_lr, then cosine "
            f"down to 1/{train.final_div_factor:g} of the start; momentum "
            f"{train.max_momentum:g} -> {train.base_momentum:g} -> {train.max_momentum:g}"
        )
    return f"{train.policy} (baseline schedule, momentum fixed at {train.momentum:g})"


def optimizer_words(train: TrainConfig) -> str:
    """The optimizer and its momentum setting."""
    beta = "beta1" if train.optimizer in ("adam", "adamw") else "momentum"
    nesterov = ", nesterov" if train.nesterov else ""
    return f"{train.optimizer} ({beta} {train.momentum:g}{nesterov})"


def trial_states(frame: pd.DataFrame) -> dict[str, int]:
    """Trials by state; failed ones split into diverged and other failures, surplus apart."""
    counts: dict[str, int] = {}
    real = frame[~frame["surplus"]]
    for state in ("complete", "pruned", "running", "waiting"):
        counts[state] = int((real["state"] == state).sum())
    failed = real[real["state"] == "fail"]
    counts["diverged"] = int((failed["fail_reason"] == "diverged").sum())
    counts["failed"] = len(failed) - counts["diverged"]
    counts["surplus"] = int(frame["surplus"].sum())
    return counts


def environment(recorded: dict[str, Any] | None, device: str) -> tuple[dict[str, Any], str]:
    """The environment the sweep recorded in ``summary.json``, else this process's own."""
    if recorded:
        return dict(recorded), "recorded when the sweep finished"
    from balance.analysis import environment as current

    env = {key: value for key, value in current(device).items() if key != "device"}
    return env, ("of the process that built this report (the sweep has not written summary.json)")


def budget_words(config: StudyConfig, steps: dict[int, int]) -> str:
    """Epochs per run, seeds per trial, trials planned and the steps each batch size takes."""
    planned = (
        f"{config.search.n_cells} grid cells"
        if config.sampler == "grid"
        else f"{config.n_trials} trials"
    )
    per_size = ", ".join(f"{steps[size]} at batch size {size}" for size in sorted(steps))
    epochs = config.train.epochs
    text = (
        f"{epochs} epoch{'s' if epochs > 1 else ''} per run (equal passes over the data "
        f"for every batch size), {config.seeds} seed{'s' if config.seeds > 1 else ''} "
        f"per trial, {planned}"
    )
    return f"{text}; steps per run: {per_size}" if per_size else text


# --------------------------------------------------------------------------- stage 1


def range_test_table(tests: dict[int, RangeTestResult]) -> pd.DataFrame:
    """One row per batch size: every rule's suggestion, the curve's answer, the probes, the LRs."""
    rows = []
    for size, test in tests.items():
        rows.append(
            {
                "batch_size": size,
                **{f"{rule}": lr for rule, lr in test.suggestions.items()},
                "rule": test.rule,
                "curve_max_lr": test.curve_max_lr,
                "probes": len(test.probes),
                "max_lr": test.max_lr,
                "min_lr": test.min_lr,
                "super_convergence": test.diagnostic.verdict,
            }
        )
    return pd.DataFrame(rows)


def stage_one_words(config: StudyConfig, stage: StageOne) -> list[str]:
    """Where each batch size's max LR came from, in plain words."""
    lrs = stage.max_lrs
    if not lrs:
        return ["Stage 1 (the LR range test) has not stored a max LR yet."]
    train = config.train
    if train.max_lr is not None:
        words = [
            f"No range test ran: the study file fixes max_lr = {train.max_lr:g} at batch "
            f"size {train.batch_size}."
        ]
    elif config.lr_scaling in ("range-test", "fit"):
        test = config.range_test
        averaged = "" if test.repeats == 1 else f", the mean of {test.repeats} seeds' sweeps"
        words = [
            f"One range test per batch size ({test.num_steps} steps, {test.mode} sweep from "
            f"{test.start_lr:g} to {test.end_lr:g}{averaged}); max_lr is the {test.rule!r} "
            f"suggestion, min_lr = max_lr / {train.div_factor:g}."
        ]
        if config.lr_scaling == "fit":
            words.append(
                "Each batch size then trains at the LR of the line max_lr = c * B^k fitted "
                "through those answers (lr_scaling = 'fit'), not at its own test's."
            )
    else:
        words = [
            f"One range test at batch size {train.batch_size}; its max_lr is scaled to "
            "the other batch sizes."
        ]
    if len(lrs) > 1 and (
        train.max_lr is not None or config.lr_scaling not in ("range-test", "fit")
    ):
        how = {
            "linear": "scaled linearly with the batch size",
            "sqrt": "scaled with the square root of the batch size",
        }
        words.append(
            f"Other batch sizes get it {how.get(config.lr_scaling, 'unchanged')} "
            f"(lr_scaling = {config.lr_scaling!r})."
        )
    return words


# --------------------------------------------------------------------------- schedules


def run_steps(runs: pd.DataFrame) -> dict[int, int]:
    """Optimizer steps of a full run per batch size, from the finished runs of completed trials."""
    counted = runs[runs["counted"]]
    return {
        int(size): int(steps)
        for size, steps in counted.groupby("batch_size")["steps"].max().items()
    }


def schedule_traces(
    train: TrainConfig, lrs: dict[int, float], steps: dict[int, int]
) -> dict[int, ScheduleTrace]:
    """The LR and momentum of every step, per batch size whose LR and step count are known."""
    traces = {}
    for size in sorted(set(lrs) & set(steps)):
        config = train.model_copy(update={"batch_size": size})
        traces[size] = schedule_values(config, steps[size], lrs[size])
    return traces


# --------------------------------------------------------------------------- test runs


def test_curves(final: FinalEvaluation, config: StudyConfig) -> pd.DataFrame:
    """Test accuracy against iterations of the chosen 1cycle run and the baseline, per seed.

    Columns: ``run`` (a label naming the setting), ``kind`` (``chosen`` or
    ``baseline``), ``seed``, ``step``, ``test_accuracy``.
    """
    rows = []
    labels = test_labels(final, config)
    for kind, side in (("chosen", final.chosen), ("baseline", final.baseline)):
        if side is None:
            continue
        for run in side.runs:
            for step, accuracy in zip(run.steps, run.test_curve, strict=True):
                if accuracy is not None:
                    rows.append(
                        {
                            "run": labels[kind],
                            "kind": kind,
                            "seed": run.seed,
                            "step": int(step),
                            "test_accuracy": float(accuracy),
                        }
                    )
    return pd.DataFrame(rows, columns=["run", "kind", "seed", "step", "test_accuracy"])


def _lr_text(lr: float | None) -> str:
    return "None" if lr is None else format(lr, ".3g")


def test_labels(final: FinalEvaluation, config: StudyConfig) -> dict[str, str]:
    """A legend label per test run: schedule, optimizer, batch size, LR and regularizers."""
    params = final.params
    labels = {
        "chosen": (
            f"chosen: {config.train.policy} 1cycle, {config.train.optimizer}, batch "
            f"{params.get('batch_size')}, max_lr {_lr_text(final.chosen.max_lr)}, wd "
            f"{params.get('weight_decay', 0):g}, dropout {params.get('dropout', 0):g}"
        )
    }
    base = config.baseline_config
    if final.baseline is not None and base is not None:
        labels["baseline"] = (
            f"baseline: {base.policy}, {base.optimizer}, batch {base.batch_size}, lr "
            f"{_lr_text(final.baseline.max_lr)}, wd {base.weight_decay:g}, "
            f"dropout {base.dropout:g}"
        )
    return labels


def test_words(final: FinalEvaluation, curves: pd.DataFrame) -> list[str]:
    """The test figures in words, and when the chosen run first matched the baseline."""
    words = []
    mean = curves.groupby(["kind", "step"])["test_accuracy"].mean()
    levels = mean.index.get_level_values(0)
    for kind, side in (("chosen", final.chosen), ("baseline", final.baseline)):
        if side is None or side.test_accuracy is None:
            continue
        steps = mean[kind].index.max() if kind in levels else None
        spread = side.test_accuracy_std
        seeds = len(side.runs)
        std = f" ± {spread:.3f}" if spread is not None and seeds > 1 else ""
        words.append(
            f"{kind.capitalize()}: test accuracy {side.test_accuracy:.3f}{std} "
            f"after {steps} iterations ({seeds} seed{'s' if seeds > 1 else ''})."
        )
    baseline = final.baseline
    if "chosen" in levels and "baseline" in levels and baseline is not None:
        target = baseline.test_accuracy
        if target is None:
            return words
        chosen = mean["chosen"]
        reached = chosen[chosen >= target]
        if len(reached):
            words.append(
                f"The chosen 1cycle run first reached the baseline's final test "
                f"accuracy ({target:.3f}) at iteration {reached.index.min()}, of "
                f"{mean['baseline'].index.max()} the baseline took."
            )
        else:
            words.append(
                f"The chosen 1cycle run never reached the baseline's final test "
                f"accuracy ({target:.3f})."
            )
    return words


def test_difference_words(test: PairedDifference) -> str:
    """The chosen-minus-baseline test difference, with its interval, in plain words."""
    level = f"{100 * test.level:.0f}%"
    judged = (
        "1cycle's win is beyond noise"
        if test.low > 0
        else "the baseline's win is beyond noise"
        if test.high < 0
        else "no detectable difference: the interval includes zero"
    )
    return (
        f"Chosen minus baseline: {100 * test.difference:+.2f} points of test accuracy "
        f"({level} interval {100 * test.low:+.2f} to {100 * test.high:+.2f}, paired over "
        f"{test.seeds} seed{'s' if test.seeds != 1 else ''} and {test.examples:,} test "
        f"examples): {judged}."
    )


# --------------------------------------------------------------------------- trials


def learning_curves(record: StudyRecord, top: int = 5) -> pd.DataFrame:
    """Per-epoch curves (mean over seeds) of the ``top`` completed trials by objective value.

    Columns: ``number``, ``label``, ``epoch``, ``val_accuracy``, ``train_loss``,
    ``val_loss``; the best trial comes first (ties by trial number).
    """
    complete = [t for t in record.trials if t.state == "complete" and t.value is not None]
    best = sorted(complete, key=lambda t: -float(t.value))[:top]  # type: ignore[arg-type]
    rows = []
    for trial in best:
        label = f"#{trial.number}: " + ", ".join(
            f"{key.replace('_', ' ')} {trial.params[key]:g}"
            for key in GRID_INDEX
            if key in trial.params
        )
        by_epoch: dict[int, dict[str, list[float]]] = {}
        for run in trial.runs:
            curve = run.curve._asdict()
            for index, epoch in enumerate(run.curve.epoch):
                slot = by_epoch.setdefault(int(epoch), {})
                for key in ("val_accuracy", "train_loss", "val_loss"):
                    value = curve[key][index]
                    if value is not None and math.isfinite(value):
                        slot.setdefault(key, []).append(float(value))
        for epoch, values in sorted(by_epoch.items()):
            rows.append(
                {
                    "number": trial.number,
                    "label": label,
                    "epoch": epoch,
                    **{
                        key: statistics.fmean(values[key]) if values.get(key) else math.nan
                        for key in ("val_accuracy", "train_loss", "val_loss")
                    },
                }
            )
    return pd.DataFrame(
        rows, columns=["number", "label", "epoch", "val_accuracy", "train_loss", "val_loss"]
    )


def trial_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials frame as the report lists it: a ``note`` says why a trial failed or stopped."""
    table = frame.copy()
    notes = []
    for row in frame.itertuples(index=False):
        if row.surplus:
            notes.append("surplus: the grid queue was empty, nothing trained")
        elif row.fail_reason == "diverged":
            notes.append(
                f"diverged at step {row.diverged_step:g}, lr {row.diverged_lr:.3g}"
                if not math.isnan(row.diverged_step)
                else "diverged"
            )
        else:
            notes.append(row.fail_reason)
    table["note"] = notes
    table.loc[table["fail_reason"] == "diverged", "state"] = "diverged"
    return table[TRIAL_TABLE_COLUMNS]
