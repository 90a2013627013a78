"""A whole study, end to end: preflight -> stage 1 -> queue -> workers -> test -> results -> report.

Every stage is a module of its own and none imports a later one; this module sits
above them all and is the only one that drives them in order. The data flows one
way: study file -> :mod:`balance.config` -> :mod:`balance.range_test` (stage 1) ->
:mod:`balance.study` (trials, each calling :func:`balance.train.train`) -> storage ->
:mod:`balance.record` -> :mod:`balance.analysis` -> :mod:`balance.report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from balance.analysis import summarize, trials_frame
from balance.config import ConfigError, PackSize, StudyConfig, pack_problem
from balance.jsonable import write_json
from balance.loop import split_size
from balance.models import ModelFactory, build_model
from balance.objects import DataArgument, TrainingData, check_picklable, labelled_study
from balance.record import StudyRecord, load_record
from balance.report import build_report
from balance.storage import open_existing, open_storage, storage_url
from balance.study import (
    ProgressCallback,
    check_signature,
    create_or_resume,
    enqueue_missing_cells,
    evaluate_on_test,
    fail_dead_workers,
    fix_max_lrs,
    load_study_data,
    race,
    run_workers,
    worker_plan,
)

DEFAULT_ROOT = Path("reports")


@dataclass
class SweepResult:
    """Where a finished sweep left its study and what it found."""

    study_name: str
    storage: str
    out_dir: Path
    summary: dict[str, Any]
    report: Path


def preflight(
    config: StudyConfig,
    *,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
) -> TrainingData:
    """Check what the schema cannot: the data loads, every batch size fits, the model builds.

    Runs before the storage is touched, so a bad study file never creates or changes a study.
    ``data`` and ``model`` are Python objects in place of ``train.data`` and ``train.model``.

    Raises:
        ConfigError: every problem found, one per line in ``problems``.
    """
    prepared = load_study_data(config, data)
    problems = []
    n_train = split_size(prepared, "train")
    for batch_size in config.batch_sizes:
        if batch_size > n_train:
            problems.append(
                f"search.batch_size: {batch_size} is larger than the training split "
                f"({n_train} examples)"
            )
    factory = config.train.model if model is None else model
    try:
        build_model(factory, prepared.input_shape, prepared.num_classes, config.train.dropout)
    except ConfigError as error:
        problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems), problems)
    return prepared


def prepare(
    config: StudyConfig, url: str, data: TrainingData, model: ModelFactory | None = None
) -> optuna.Study:
    """Everything before the trials: create or resume the study, stage 1, queue the grid.

    Trials that dead local workers left running are failed first, so their cells
    are queued again. ``balance worker`` processes can join once this returned.
    """
    study = create_or_resume(config, url)
    fix_max_lrs(study, config, data, threads=config.train.threads, model=model)
    fail_dead_workers(study, open_storage(url))
    if config.sampler == "grid":
        enqueue_missing_cells(study, config)
    return study


def write_results(
    record: StudyRecord, out_dir: Path, *, wall_time: float | None = None
) -> dict[str, Any]:
    """Write ``trials.csv``, ``trials.parquet`` and ``summary.json`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(record)
    frame.to_csv(out_dir / "trials.csv", index=False)
    frame.to_parquet(out_dir / "trials.parquet", index=False)
    summary = summarize(record, frame, wall_time=wall_time)
    write_json(out_dir / "summary.json", summary)
    return summary


def load_study_record(
    config: StudyConfig,
    *,
    storage: str | None = None,
    root: Path = DEFAULT_ROOT,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
) -> StudyRecord:
    """Read the study a file names from its storage (the default journal under ``root``).

    A study swept with ``data`` or ``model`` objects was stored under their labels
    (:mod:`balance.objects`): pass the same objects (only their labels are used), or a
    config whose ``train.data`` and ``train.model`` are those labels.

    Raises:
        ConfigError: no such journal file, no study of that name in the storage, or a
            study made with another space or base run than the file says.
    """
    config = labelled_study(config, model=model, data=data)
    url = storage_url(config, storage, root)
    study, _ = open_existing(config.name, url)
    check_signature(study, config)
    return load_record(study, config, storage=url)


def report(
    config: StudyConfig,
    *,
    storage: str | None = None,
    root: Path = DEFAULT_ROOT,
    study_file: Path | None = None,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
) -> Path:
    """(Re)build ``root/<study>/index.html`` from whatever the storage holds, mid-sweep too.

    Reading never changes the study. ``data`` and ``model``: the objects a study was
    swept with, if any (:func:`load_study_record`); nothing is trained or loaded.

    Raises:
        ConfigError: the storage holds no study of that name.
    """
    record = load_study_record(config, storage=storage, root=root, data=data, model=model)
    return build_report(record, root=root, study_file=study_file)


def sweep(
    config: StudyConfig,
    *,
    storage: str | None = None,
    workers: int | None = None,
    root: Path = DEFAULT_ROOT,
    on_progress: ProgressCallback | None = None,
    study_file: Path | None = None,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
    pack: PackSize | None = None,
) -> SweepResult:
    """Run a whole study: stage 1 (max LR per batch size), stage 2 (the sweep), test, results.

    Re-running the same study on the same storage resumes it: stage 1 is not
    redone, completed cells are not run again, interrupted ones are. ``study_file``
    only names the file in the report. ``data`` and ``model`` are Python objects in
    place of ``train.data`` and ``train.model`` (:mod:`balance.objects`); the study is
    stored under their labels, and with ``workers > 1`` they must pickle (checked first).
    ``pack`` (default: the file's ``pack``): each worker trains up to that many queued
    grid trials at once as one packed model.

    Example:
        >>> from balance import load_study_file, sweep
        >>> result = sweep(load_study_file("studies/mnist1d-cnn.toml"))  # doctest: +SKIP
    """
    started = time.perf_counter()
    n_workers = config.workers if workers is None else workers
    if n_workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {n_workers}")
    check_picklable(n_workers, model=model, data=data)
    problem = pack_problem(config, pack)
    if problem is not None:
        raise ConfigError(problem)
    config = labelled_study(config, model=model, data=data)
    prepared = preflight(config, data=data, model=model)
    # Workers load data named in the config themselves; objects are handed to them split.
    objects: dict[str, Any] = {
        "data": None if data is None else prepared,
        "model": model,
        "pack": pack,
    }
    url = storage_url(config, storage, root)
    prepare(config, url, prepared, model)
    run_workers(config, url, n_workers, on_progress, **objects)
    study, _ = open_existing(config.name, url)
    race(study, config, lambda: run_workers(config, url, n_workers, on_progress, **objects))
    threads = worker_plan(config, n_workers)[0][0]
    evaluate_on_test(study, config, prepared, threads=threads, workers=n_workers, model=model)
    record = load_record(study, config, storage=url)
    out_dir = root / config.name
    summary = write_results(record, out_dir, wall_time=time.perf_counter() - started)
    page = build_report(record, root=root, study_file=study_file)
    return SweepResult(
        study_name=config.name, storage=url, out_dir=out_dir, summary=summary, report=page
    )
