"""The HTML report: one self-contained page per study, from its record.

:func:`build_report` takes a :class:`~balance.record.StudyRecord` (of a finished,
partial or still running study), computes what to show with :mod:`balance.analysis`
and :mod:`balance.report._data`, draws it with :mod:`balance.report.plots`, and
renders ``templates/report.html`` with Jinja2. Like Optuna's ``plot_*`` functions
with a ``Study``, it reads no storage: :func:`balance.pipeline.report` loads one.
Figures are embedded as base64 PNG and the CSS is inline: the page loads nothing
from anywhere and opens from disk.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from balance.analysis import analyse_noise, runs_frame, trials_frame
from balance.config import FloatRange
from balance.record import StudyRecord
from balance.report import _data as data
from balance.report import _sections as sections
from balance.report._lr_section import lr_section
from balance.runs import FinalEvaluation


def build_report(
    record: StudyRecord, *, root: Path = Path("reports"), study_file: Path | None = None
) -> Path:
    """Write ``root/<study>/index.html`` from a study record.

    Works on a finished study, on a partial or running one (missing cells are
    marked, queued and running trials listed) and on one with no completed trial
    yet (the page says so). ``summary.json`` beside the page, when the sweep wrote
    it, gives the recorded environment and wall time.

    Args:
        record: the study, read by :func:`balance.record.load_record`.
        root: the reports folder; the page goes to ``root/<study>/index.html``.
        study_file: the study file's path, named in the page's header.

    Returns:
        The path of the page written.

    Example:
        >>> from balance import load_study_file
        >>> from balance.pipeline import load_study_record
        >>> from balance.report import build_report
        >>> config = load_study_file("studies/mnist1d-cnn.toml")
        >>> build_report(load_study_record(config))  # doctest: +SKIP
        PosixPath('reports/mnist1d-cnn/index.html')
    """
    if not isinstance(record, StudyRecord):
        raise TypeError(
            f"build_report takes a StudyRecord, got {type(record).__name__}; read one with "
            "balance.load_study_record(config), or build from storage with balance.report(config)"
        )
    out_dir = root / record.name
    out_dir.mkdir(parents=True, exist_ok=True)
    context = report_context(record, out_dir=out_dir, study_file=study_file)
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
    record: StudyRecord, *, out_dir: Path, study_file: Path | None = None
) -> dict[str, Any]:
    """Everything the template shows, figures already drawn."""
    config = record.config
    trials = trials_frame(record)
    runs = runs_frame(record)
    summary = _read_summary(out_dir)
    lrs = record.stage_one.max_lrs
    steps = data.run_steps(runs)
    for size, count in _final_steps(record.final).items():
        steps.setdefault(size, count)
    context: dict[str, Any] = {
        "config": config,
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "states": data.trial_states(trials),
        "has_complete": bool((trials["state"] == "complete").any()),
        "facts": _facts(record, study_file, summary, steps, lrs),
        "config_json": json.dumps(config.model_dump(mode="json"), indent=2),
        "trials_csv": (out_dir / "trials.csv").exists(),
    }
    context.update(sections.range_test_section(record))
    context.update(sections.schedule_section(config, lrs, steps))
    noise = analyse_noise(record)
    balance = sections.balance_section(record, runs, trials, noise)
    context.update(balance)
    context.update(sections.batch_size_section(balance["accuracy_grid"], lrs, config))
    context.update(lr_section(record, noise))
    context.update(sections.test_section(record, noise))
    context.update(sections.importance_section(record))
    context.update(sections.trials_section(record, trials))
    return context


# --------------------------------------------------------------------------- sections


def _read_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "summary.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _final_steps(final: FinalEvaluation | None) -> dict[int, int]:
    if final is None:
        return {}
    size = final.params.get("batch_size")
    runs = [run for run in final.chosen.runs if run.steps]
    return {int(size): int(runs[0].steps[-1])} if size is not None and runs else {}


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
    record: StudyRecord,
    study_file: Path | None,
    summary: dict[str, Any],
    steps: dict[int, int],
    lrs: dict[int, float],
) -> list[tuple[str, str]]:
    config = record.config
    train = config.train
    env, env_source = data.environment(summary.get("environment"), train.device)
    times = {"span_s": record.span_s(), "trials_s": record.trials_s()}
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
        ("storage", record.storage),
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
            f"{device}; threads per worker "
            f"{'all cores / workers' if train.threads is None else train.threads}, "
            f"{config.workers} local worker{'s' if config.workers > 1 else ''}",
        ),
        ("wall time", _wall_time(summary.get("wall_time_s"), times)),
    ]
