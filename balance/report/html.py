"""The HTML report: one self-contained page per study, from whatever its storage holds.

:func:`build_report` reads the study (finished, partial or still running), computes
what to show with :mod:`balance.analysis` and :mod:`balance.report._data`, draws it
with :mod:`balance.report.plots`, and renders ``templates/report.html`` with Jinja2.
Figures are embedded as base64 PNG and the CSS is inline: the page loads nothing
from anywhere and opens from disk.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pandas as pd
from matplotlib.figure import Figure

from balance.analysis import (
    AXIS_WORDS,
    METRICS,
    balance_grid,
    balance_verdict,
    batch_size_table,
    bin_ranges,
    grid_axes,
    regularizer_effects,
    runs_frame,
    trials_frame,
)
from balance.config import ConfigError, FloatRange, StudyConfig
from balance.report import _data as data
from balance.report import plots
from balance.study import is_file_storage, open_storage, storage_url

FIGURE_DPI = 100
TOP_TRIALS = 5
BAYES_BINS = 4
_STATE_CLASSES = {
    "complete": "ok",
    "pruned": "pruned",
    "running": "running",
    "waiting": "queued",
    "diverged": "diverged",
    "fail": "failed",
}


class Picture(NamedTuple):
    """An embedded figure: its ``data:`` URI and the alternative text that describes it."""

    uri: str
    alt: str


def figure_uri(figure: Figure, *, dpi: int = FIGURE_DPI) -> str:
    """``figure`` as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(figure: Figure, alt: str) -> Picture:
    return Picture(figure_uri(figure), alt)


def build_report(
    config: StudyConfig,
    *,
    storage: str | None = None,
    root: Path = Path("reports"),
    study_file: Path | None = None,
) -> Path:
    """Write ``root/<study>/index.html`` from what the study's storage holds now.

    Works on a finished study, on a partial or running one (missing cells are
    marked, queued and running trials listed) and on one with no completed trial
    yet (the page says so). Reading never changes the study.

    Args:
        config: the study file's configuration (names the study and its space).
        storage: an Optuna storage URL; default as in :func:`balance.study.sweep`.
        root: the reports folder; the page goes to ``root/<study>/index.html``.
        study_file: the study file's path, named in the page's header.

    Returns:
        The path of the page written.

    Raises:
        ConfigError: the storage holds no study of that name.

    Example:
        >>> from balance import load_study_file
        >>> from balance.report import build_report
        >>> build_report(load_study_file("studies/mnist1d-cnn.toml"))  # doctest: +SKIP
        PosixPath('reports/mnist1d-cnn/index.html')
    """
    url = storage_url(config, storage, root)
    if is_file_storage(url) and not Path(url).exists():
        raise ConfigError(f"study: no journal at {url}; start the study with `balance sweep`")
    try:
        study = optuna.load_study(study_name=config.name, storage=open_storage(url))
    except KeyError:
        raise ConfigError(
            f"study: no study named {config.name!r} in this storage; start it with `balance sweep`"
        ) from None
    out_dir = root / config.name
    out_dir.mkdir(parents=True, exist_ok=True)
    context = report_context(study, config, url=url, out_dir=out_dir, study_file=study_file)
    path = out_dir / "index.html"
    path.write_text(render(context), encoding="utf-8")
    return path


def render(context: dict[str, Any]) -> str:
    """The page: ``templates/report.html`` rendered with ``context``."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(
        loader=PackageLoader("balance.report", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html").render(**context)


def report_context(
    study: optuna.Study,
    config: StudyConfig,
    *,
    url: str,
    out_dir: Path,
    study_file: Path | None = None,
) -> dict[str, Any]:
    """Everything the template shows, figures already drawn."""
    trials = trials_frame(study, config)
    runs = runs_frame(study, config)
    summary = _read_summary(out_dir)
    lrs = data.max_lrs(study)
    steps = data.run_steps(runs)
    for size, count in _final_steps(study).items():
        steps.setdefault(size, count)
    context: dict[str, Any] = {
        "config": config,
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "states": data.trial_states(trials),
        "has_complete": bool((trials["state"] == "complete").any()),
        "facts": _facts(study, config, url, study_file, summary, steps, lrs),
        "config_json": json.dumps(config.model_dump(mode="json"), indent=2),
        "trials_csv": (out_dir / "trials.csv").exists(),
    }
    context.update(_range_test_section(study, config))
    context.update(_schedule_section(config, lrs, steps))
    context.update(_balance_section(config, runs, trials))
    context.update(_batch_size_section(context.pop("_accuracy_grid"), lrs, config))
    context.update(_test_section(study, config))
    context.update(_importance_section(study))
    context.update(_trials_section(study, trials))
    return context


# --------------------------------------------------------------------------- sections


def _read_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "summary.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _final_steps(study: optuna.Study) -> dict[int, int]:
    final = study.user_attrs.get("final") or {}
    chosen = final.get("chosen") or {}
    size = (final.get("params") or {}).get("batch_size")
    runs = [run for run in chosen.get("runs", []) if run.get("steps")]
    return {int(size): int(runs[0]["steps"][-1])} if size is not None and runs else {}


def _seconds(value: float) -> str:
    return f"{value:,.1f} s" if value < 120 else f"{value / 60:,.1f} min"


def _wall_time(sweep_s: float | None, times: dict[str, float | None]) -> str:
    parts = [
        f"sweep {_seconds(sweep_s)} (stage 1, trials, test runs)"
        if sweep_s is not None
        else "sweep not finished"
    ]
    if times["span_s"] is not None and times["trials_s"] is not None:
        parts.append(
            f"trials ran over {_seconds(times['span_s'])}, "
            f"{_seconds(times['trials_s'])} of trial time in all"
        )
    return "; ".join(parts)


def _facts(
    study: optuna.Study,
    config: StudyConfig,
    url: str,
    study_file: Path | None,
    summary: dict[str, Any],
    steps: dict[int, int],
    lrs: dict[int, float],
) -> list[tuple[str, str]]:
    train = config.train
    env, env_source = data.environment(summary.get("environment"))
    times = data.trial_times(study)
    axes = []
    for name, axis in config.search.axes().items():
        if isinstance(axis, FloatRange):
            axes.append(f"{name} in [{axis.low:g}, {axis.high:g}]{' (log)' if axis.log else ''}")
        else:
            axes.append(f"{name} {[float(v) if name != 'batch_size' else v for v in axis]}")
    device = train.device
    if device == "auto" and env.get("device"):
        device = f"auto: {env['device']} ({env_source})"
    elif device == "auto":
        import torch

        device = (
            f"auto (cuda when available; {'cuda' if torch.cuda.is_available() else 'cpu'} "
            "on the machine that built this report)"
        )
    return [
        ("study", f"{config.name}" + (f": {config.description}" if config.description else "")),
        (
            "study file",
            str(study_file)
            if study_file
            else "not named (settings below come from the configuration)",
        ),
        ("storage", url),
        (
            "data",
            f"{train.data} (validation fraction {train.validation_fraction:g}, split seed "
            f"{train.split_seed}{', augmented' if train.augment else ''})",
        ),
        ("model", train.model),
        ("optimizer", data.optimizer_words(train)),
        ("weight decay", data.weight_decay_words(train)),
        ("policy", data.policy_words(train)),
        ("search", f"{config.sampler} sampler, {config.pruner} pruner: " + " x ".join(axes)),
        ("budget", data.budget_words(config, steps)),
        (
            "max LR per batch size",
            ", ".join(f"{lr:.3g} at {size}" for size, lr in sorted(lrs.items()))
            or "not fixed yet (stage 1)",
        ),
        (
            "environment",
            f"python {env.get('python')}, torch {env.get('torch')}, optuna "
            f"{env.get('optuna')}, {env.get('threads')} torch threads, "
            f"{env.get('machine')} ({env_source})",
        ),
        (
            "device",
            f"{device}; threads per worker {train.threads or 'all cores / workers'}, "
            f"{config.workers} local worker{'s' if config.workers > 1 else ''}",
        ),
        ("wall time", _wall_time(summary.get("wall_time_s"), times)),
    ]


def _range_test_section(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    tests = data.range_tests(study)
    section: dict[str, Any] = {
        "stage_one_words": data.stage_one_words(config, study, tests),
        "range_figure": None,
        "range_table": "",
        "range_tests": tests,
    }
    if tests:
        section["range_figure"] = _picture(
            plots.plot_range_tests(tests),
            "LR range test: training loss against learning rate per batch size, "
            "with each rule's suggestion and the chosen max and min LR",
        )
        table = data.range_test_table(tests)
        section["range_table"] = _html_table(
            table,
            {
                **{
                    column: _lr
                    for column in ("steepest", "valley", "minimum", "accuracy", "max_lr", "min_lr")
                }
            },
        )
    return section


def _schedule_section(
    config: StudyConfig, lrs: dict[int, float], steps: dict[int, int]
) -> dict[str, Any]:
    traces = data.schedule_traces(config.train, lrs, steps)
    waiting = sorted(set(lrs) - set(traces))
    notes = []
    if not lrs:
        notes.append("The schedule is drawn once stage 1 has fixed the max LR.")
    elif waiting:
        notes.append(
            "Not drawn yet for batch size "
            + ", ".join(map(str, waiting))
            + ": no run of that size has finished, so its step count is not known."
        )
    figure = None
    if traces:
        figure = _picture(
            plots.plot_schedules(traces, policy=config.train.policy),
            "learning rate and momentum of every step, per batch size",
        )
    return {
        "schedule_figure": figure,
        "schedule_notes": notes,
        "policy_words": data.policy_words(config.train),
    }


def _balance_section(
    config: StudyConfig, runs: pd.DataFrame, trials: pd.DataFrame
) -> dict[str, Any]:
    axes = grid_axes(config)
    grids = {metric: balance_grid(runs, metric, trials=trials, axes=axes) for metric in METRICS}
    accuracy = grids["val_accuracy"]
    measured = bool((accuracy["seeds"] > 0).any())
    figures: list[tuple[str, Picture]] = []
    effects = None
    if axes is None:
        binned = bin_ranges(runs, config, bins=BAYES_BINS)
        effects = regularizer_effects(balance_grid(binned, "val_accuracy"))
    verdict = balance_verdict(
        accuracy, effects=effects, unit="cell" if axes is not None else "trial"
    )
    chosen = (
        None
        if verdict.best is None
        else (verdict.best.batch_size, verdict.best.weight_decay, verdict.best.dropout)
    )
    if axes is not None and len(accuracy):
        for metric in METRICS if measured else ("val_accuracy",):
            figure = plots.plot_balance(grids[metric], metric, chosen=chosen)
            figures.append(
                (
                    metric,
                    _picture(
                        figure,
                        f"heatmap of {plots.METRIC_LABELS[metric]} over weight decay and "
                        "dropout, one panel per batch size",
                    ),
                )
            )
    elif axes is None and measured:
        weight_decay = config.search.weight_decay
        log = isinstance(weight_decay, FloatRange) and weight_decay.log
        complete = trials[trials["state"] == "complete"]
        best = int(complete.loc[complete["val_accuracy"].idxmax(), "number"])
        limits = {
            name: (axis.low, axis.high)
            for name, axis in config.search.axes().items()
            if isinstance(axis, FloatRange)
        }
        for metric in METRICS:
            figure = plots.plot_balance_scatter(
                trials, metric, log_weight_decay=log, best_number=best, limits=limits
            )
            figures.append(
                (
                    metric,
                    _picture(
                        figure,
                        f"scatter of trials over weight decay and dropout coloured by "
                        f"{plots.METRIC_LABELS[metric]}",
                    ),
                )
            )
    effect_rows = []
    for metric in METRICS:
        grid = (
            grids[metric]
            if axes is not None
            else balance_grid(bin_ranges(runs, config, bins=BAYES_BINS), metric)
        )
        for effect in regularizer_effects(grid, higher_is_better=metric == "val_accuracy"):
            effect_rows.append(
                {
                    "metric": plots.METRIC_LABELS[metric],
                    "axis": effect.name,
                    "spread": effect.spread,
                    "best value": effect.best_value,
                    "worst value": effect.worst_value,
                }
            )
    effects_table = ""
    if effect_rows:
        effects_frame = pd.DataFrame(effect_rows).pivot(
            index="axis", columns="metric", values="spread"
        )
        order = [plots.METRIC_LABELS[metric] for metric in METRICS]
        effects_frame = effects_frame[[name for name in order if name in effects_frame]]
        effects_frame.index = [AXIS_WORDS[name] for name in effects_frame.index]
        effects_table = _html_table(
            effects_frame.rename_axis("axis").reset_index(), {}, precision=3
        )
    return {
        "grid_study": axes is not None,
        "balance_figures": figures,
        "measured": measured,
        "verdict": verdict,
        "effects_table": effects_table,
        "bins": BAYES_BINS,
        "_accuracy_grid": accuracy,
    }


def _batch_size_section(
    grid: pd.DataFrame, lrs: dict[int, float], config: StudyConfig
) -> dict[str, Any]:
    table = batch_size_table(grid, lrs, div_factor=config.train.div_factor)
    figure = None
    if len(table) and ((grid["seeds"] > 0).any() or lrs):
        figure = _picture(
            plots.plot_batch_sizes(table, grid),
            "best validation accuracy and max LR per batch size",
        )
    formats = {"max_lr": _lr, "min_lr": _lr, "weight decay": _g, "dropout": _g}
    shown = table.reset_index().rename(
        columns={
            "batch_size": "batch size",
            "best_mean": "best cell's val accuracy",
            "best_std": "its seed std",
            "weight_decay": "weight decay",
            "cells": "cells measured",
            "cell_min": "worst cell",
            "cell_max": "best cell",
        }
    )
    return {
        "batch_figure": figure,
        "batch_table": _html_table(shown, formats) if len(table) else "",
    }


def _test_section(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    final = study.user_attrs.get("final")
    if not final:
        return {
            "test_figure": None,
            "test_words": [
                "The test split is measured once the sweep has finished (it chooses nothing)."
            ],
        }
    curves = data.test_curves(final, config)
    words = data.test_words(final, curves)
    try:
        current = study.best_trial.number
    except ValueError:
        current = None
    if current is not None and current != final.get("trial"):
        words.append(
            f"These runs are of trial #{final.get('trial')}; the best trial is now "
            f"#{current} (the study went on after the test evaluation)."
        )
    if config.baseline is None:
        words.append("The study file names no baseline, so there is nothing to compare with.")
    figure = None
    if len(curves):
        figure = _picture(
            plots.plot_test_curves(curves),
            "test accuracy against iterations, chosen 1cycle run and baseline",
        )
    return {"test_figure": figure, "test_words": words}


def _importance_section(study: optuna.Study) -> dict[str, Any]:
    result = data.param_importances(study)
    figure = None
    if result.values:
        figure = _picture(
            plots.plot_importances(result.values, evaluator=result.evaluator),
            "parameter importances for validation accuracy",
        )
    return {"importances": result, "importance_figure": figure}


def _trials_section(study: optuna.Study, trials: pd.DataFrame) -> dict[str, Any]:
    curves = data.learning_curves(study, top=TOP_TRIALS)
    figure = None
    if len(curves):
        figure = _picture(plots.plot_learning_curves(curves), "learning curves of the best trials")
    table = data.trial_table(trials)
    formats = {
        "weight_decay": _g,
        "dropout": _g,
        "max_lr": _lr,
        "val_accuracy": _f4,
        "val_accuracy_std": _f4,
        "val_loss": _f4,
        "train_loss": _f4,
        "gap": _f4,
        "duration_s": "{:.1f}".format,
    }
    styled = ""
    if len(table):
        classes = pd.DataFrame("", index=table.index, columns=table.columns)
        for index, state in table["state"].items():
            classes.loc[index, :] = _STATE_CLASSES.get(str(state), "")
        styler = (
            table.style.hide(axis="index")
            .format(formats, na_rep="\u2014")
            .set_td_classes(classes)
            .set_table_attributes('class="trials"')
        )
        styled = styler.to_html()
    return {"curves_figure": figure, "top_trials": TOP_TRIALS, "trials_table": styled}


# --------------------------------------------------------------------------- tables


def _g(value: float) -> str:
    return f"{value:g}"


def _lr(value: float | None) -> str:
    return "\u2014" if value is None or pd.isna(value) else f"{value:.3g}"


def _f4(value: float) -> str:
    return f"{value:.4f}"


def _html_table(frame: pd.DataFrame, formats: dict[str, Any], *, precision: int = 4) -> str:
    styler = frame.style.hide(axis="index").format(precision=precision, na_rep="\u2014")
    if formats:
        styler = styler.format(
            {key: value for key, value in formats.items() if key in frame.columns}, na_rep="\u2014"
        )
    return str(styler.set_table_attributes('class="data"').to_html())
