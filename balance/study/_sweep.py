"""Run a study: create or resume it, fix the max LRs, queue the cells, run workers, evaluate."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from balance.config import SEARCHED, ConfigError, StudyConfig
from balance.data import Dataset, load_dataset
from balance.range_test import RangeTestResult
from balance.study._learning_rate import fit_max_lrs
from balance.study._objective import Objective, TrainingDiverged, worker_identity
from balance.study._space import batch_sizes, cell_key, grid_cells
from balance.study._stopping import request_stop, stop_deferred
from balance.study._storage import (
    is_file_storage,
    load_existing,
    open_storage,
    storage_url,
)
from balance.train import resolve_device, train

DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STOP_GRACE_S = 30  # how long a stopped local worker may take to record its trial as failed
WAIT_POLL_S = 2.0  # how often an idle worker checks other workers' running trials


@dataclass(frozen=True)
class Progress:
    """How far a study is: finished trials, the target, the best value, trials running."""

    done: int
    total: int
    best: float | None
    running: int


ProgressCallback = Callable[[Progress], None]


@dataclass
class SweepResult:
    """Where a finished sweep left its study and what it found."""

    study_name: str
    storage: str
    out_dir: Path
    summary: dict[str, Any]
    report: Path


class QueuedGridSampler(optuna.samplers.GridSampler):
    """GridSampler for cells queued with ``enqueue_trial``; the workers decide when to stop.

    GridSampler.after_trial stops the study when one grid point is left and reads the
    finished trial's ``grid_id``, which queued trials never get: a one-cell grid raised
    ``KeyError: 'grid_id'``. Workers here run one trial per ``optimize`` call and stop
    when the queue is empty, so that stop is not needed.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Do nothing: the queue, not the sampler, ends a grid study."""


def make_sampler(config: StudyConfig, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler; each worker gets its own seed (fixed seeds repeat across workers)."""
    seed = config.sampler_seed + worker_index
    if config.sampler == "grid":
        axes = config.search.axes()
        grid = {name: axis for name, axis in axes.items() if isinstance(axis, list)}
        return QueuedGridSampler(grid, seed=seed)
    if config.sampler == "tpe":
        startup = min(10, config.n_trials or 10)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner, fed per-epoch validation accuracy at step ``seed * epochs + epoch``."""
    epochs = config.train.epochs
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, epochs // 8),
            max_resource=epochs * config.seeds,
            reduction_factor=3,
        )
    return optuna.pruners.NopPruner()


def _load_data(config: StudyConfig) -> Dataset:
    train_config = config.train
    return load_dataset(
        train_config.data,
        data_path=train_config.data_path,
        validation_fraction=train_config.validation_fraction,
        split_seed=train_config.split_seed,
    )


def preflight(config: StudyConfig) -> Dataset:
    """Check what the schema cannot: the data loads, every batch size fits, the model builds.

    Runs before the storage is touched, so a bad study file never creates or changes a study.

    Raises:
        ConfigError: every problem found, one per line in ``problems``.
    """
    from balance.models import build_model

    data = _load_data(config)
    problems = []
    n_train = len(data.x_train)
    for batch_size in batch_sizes(config.search, config.train):
        if batch_size > n_train:
            problems.append(
                f"search.batch_size: {batch_size} is larger than the training split "
                f"({n_train} examples)"
            )
    try:
        build_model(config.train.model, data.input_shape, data.num_classes, config.train.dropout)
    except ConfigError as error:
        problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems), problems)
    return data


def create_or_resume(config: StudyConfig, url: str) -> optuna.Study:
    """Create the study, or load it when the same file was run before.

    Raises:
        ConfigError: the stored study was made with a different space or base run.
    """
    storage = open_storage(url)
    try:  # load first: creating an existing study would still append to a journal file
        study = optuna.load_study(
            study_name=config.name,
            storage=storage,
            sampler=make_sampler(config),
            pruner=make_pruner(config),
        )
    except KeyError:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            direction="maximize",
            sampler=make_sampler(config),
            pruner=make_pruner(config),
        )
    signature = json.loads(json.dumps(config.space_signature()))
    stored = study.user_attrs.get("signature")
    if stored is None:
        study.set_user_attr("signature", signature)
        study.set_user_attr("config", config.model_dump(mode="json"))
    elif stored != signature:
        changed = sorted(key for key in signature if stored.get(key) != signature[key])
        raise ConfigError(
            f"study: {config.name!r} in this storage was made with a different "
            f"{', '.join(changed)}; use a new study name or the original file"
        )
    return study


def stored_max_lrs(study: optuna.Study) -> dict[int, float]:
    """The max LR per batch size fixed by stage 1 (empty before it ran)."""
    return {int(size): float(lr) for size, lr in study.user_attrs.get("max_lr", {}).items()}


def stored_range_tests(study: optuna.Study) -> dict[int, RangeTestResult]:
    """The range tests stage 1 stored, by batch size."""
    return {
        int(size): RangeTestResult.from_dict(test)
        for size, test in study.user_attrs.get("range_tests", {}).items()
    }


def prepare(config: StudyConfig, url: str, data: Dataset) -> optuna.Study:
    """Everything before the trials: create or resume the study, stage 1, queue the grid.

    Trials that dead local workers left running are failed first, so their cells
    are queued again. ``balance worker`` processes can join once this returned.
    """
    study = create_or_resume(config, url)
    fix_max_lrs(study, config, data, threads=config.train.threads)
    fail_dead_workers(study)
    if config.sampler == "grid":
        enqueue_missing_cells(study, config)
    return study


def fix_max_lrs(
    study: optuna.Study, config: StudyConfig, data: Dataset, threads: int | None = None
) -> dict[int, float]:
    """Stage 1, once per study: run the range tests and store their curves and LRs."""
    max_lrs = stored_max_lrs(study)
    if max_lrs:
        return max_lrs
    max_lrs, tests = fit_max_lrs(config, data, threads=threads)
    study.set_user_attr("range_tests", {str(size): test.to_dict() for size, test in tests.items()})
    study.set_user_attr("max_lr", {str(size): lr for size, lr in max_lrs.items()})
    return max_lrs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of dead local workers as failed (journal files have no heartbeat).

    A trial is stale when its recorded worker ran on this host and that process
    is gone. Database storages find stale trials by Optuna's heartbeat instead.
    """
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker and worker["host"] == host and not _alive(int(worker["pid"])):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "worker died")
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            failed.append(trial.number)
    return failed


def _trial_cell(trial: optuna.trial.FrozenTrial) -> str | None:
    if "cell" in trial.user_attrs:
        return str(trial.user_attrs["cell"])
    fixed = trial.system_attrs.get("fixed_params")
    return cell_key(fixed) if fixed else None


def enqueue_missing_cells(study: optuna.Study, config: StudyConfig) -> int:
    """Queue every grid cell no trial covers yet; return how many were queued.

    A cell is covered by a trial that completed, was pruned, diverged, waits in
    the queue, or runs. A cell whose trial was interrupted is queued again.
    """
    covered = set()
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus"):
            continue
        active = trial.state in (
            TrialState.COMPLETE,
            TrialState.PRUNED,
            TrialState.WAITING,
            TrialState.RUNNING,
        )
        if active or (trial.state == TrialState.FAIL and "diverged" in trial.user_attrs):
            key = _trial_cell(trial)
            if key is not None:
                covered.add(key)
    queued = 0
    for cell in grid_cells(config.search):
        key = cell_key(cell)
        if key not in covered:
            study.enqueue_trial(cell, user_attrs={"cell": key})
            queued += 1
    return queued


def progress_of(study: optuna.Study, config: StudyConfig) -> Progress:
    """Count finished and running trials (surplus grid trials left out)."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    done = sum(t.state in DONE_STATES for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if config.sampler == "grid":
        total = config.search.n_cells
        done = len({_trial_cell(t) for t in trials if t.state in DONE_STATES} - {None})
    else:
        total = config.n_trials or 0
    return Progress(done=done, total=total, best=max(values) if values else None, running=running)


def _has_work(study: optuna.Study, config: StudyConfig) -> bool:
    if config.sampler == "grid":
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    # Interrupted and dead-worker trials do not use up the budget; diverged ones do.
    counted = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and "diverged" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )
    return counted < (config.n_trials or 0)


def _others_running(study: optuna.Study) -> bool:
    """Whether trials may still come back to the queue: some run, and a heartbeat watches them.

    Fails the trials whose heartbeat went stale; the retry callback queues a copy of
    each. Without a heartbeat (journal files) a dead worker's trial cannot be told
    from a live one, so nobody waits for it (re-running ``balance sweep`` queues it).
    """
    if not is_heartbeat_enabled(study._storage):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def requeue_interrupted(study: optuna.Study, config: StudyConfig) -> list[int]:
    """Queue again the grid cells this process's interrupted trials were training.

    A stopped worker hands its cell back, so the other workers (or a re-run) train
    it; each process queues only its own trials, so no cell is queued twice.
    """
    if config.sampler != "grid":
        return []
    me = worker_identity()
    trials = study.get_trials(deepcopy=False)
    done = {t.user_attrs.get("requeued_from") for t in trials}
    requeued = []
    for trial in trials:
        attrs = trial.user_attrs
        if trial.state != TrialState.FAIL or attrs.get("worker") != me or trial.number in done:
            continue
        if "diverged" in attrs or "cell" not in attrs or attrs.get("fail_reason"):
            continue
        cell = {name: trial.params[name] for name in config.search.axes()}
        study.enqueue_trial(cell, user_attrs={"cell": attrs["cell"], "requeued_from": trial.number})
        requeued.append(trial.number)
    return requeued


def run_one_trial(study: optuna.Study, objective: Objective) -> None:
    """Claim, train and record one trial; a stop request is taken only while it trains.

    Deferring the stop elsewhere keeps a claimed trial from failing before the
    objective marks it as this worker's, which would leave its cell unqueued.
    """
    with stop_deferred():
        study.optimize(objective, n_trials=1, catch=(TrainingDiverged,), gc_after_trial=False)


def run_worker(
    config: StudyConfig,
    url: str,
    *,
    threads: int | None = None,
    device: str | None = None,
    worker_index: int = 0,
    on_progress: ProgressCallback | None = None,
) -> int:
    """Join the study at ``url`` and run trials until none is left; return how many ran.

    The study must exist and stage 1 must be done (``balance sweep`` does both).
    Several workers, on this machine or others, may run at once. On a database
    storage a worker with nothing left to do waits while other workers' trials
    run: if one of them dies, its trial is failed after the heartbeat's grace
    period and queued again, and a waiting worker trains it. Interrupted
    (``KeyboardInterrupt``), a worker queues its cell again and re-raises.
    """
    if is_file_storage(url) and not Path(url).exists():
        raise ConfigError(
            f"study: no study named {config.name!r} at {url}; start it with `balance sweep`"
        )
    storage = open_storage(url)
    study = load_existing(config.name, storage)
    study.sampler = make_sampler(config, worker_index)
    study.pruner = make_pruner(config)
    max_lrs = stored_max_lrs(study)
    if not max_lrs:
        raise ConfigError(f"study: {config.name!r} has no max LR yet; run `balance sweep` first")
    objective = Objective(config, _load_data(config), max_lrs, threads=threads, device=device)
    ran = 0
    try:
        while True:
            if _has_work(study, config):
                run_one_trial(study, objective)
                ran += 1
                if on_progress is not None:
                    on_progress(progress_of(study, config))
            elif _others_running(study):
                time.sleep(WAIT_POLL_S)  # a stale trial comes back queued
            else:
                return ran
    except KeyboardInterrupt:
        requeue_interrupted(study, config)
        raise


def _stop_once(signum: int, frame: Any) -> None:
    # The first SIGINT or SIGTERM interrupts the trial's training (Optuna records it as
    # failed, quietly: the stop was asked for); later ones are ignored so they cannot cut
    # that write short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    request_stop()


class WorkerDied(RuntimeError):
    """A local worker process ended without finishing (killed by a signal, out of memory)."""


def _worker_process(errors: Any, verbosity: int, *args: Any, **kwargs: Any) -> None:
    """A local worker process: run_worker, with errors sent back to the parent."""
    signal.signal(signal.SIGINT, _stop_once)
    signal.signal(signal.SIGTERM, _stop_once)
    optuna.logging.set_verbosity(verbosity)  # a spawned process starts at Optuna's default
    try:
        run_worker(*args, **kwargs)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as error:
        try:
            errors.put(error)
        except Exception:  # not picklable: send its text and traceback instead
            errors.put(RuntimeError(traceback.format_exc()))
        raise SystemExit(1) from None


def _worker_plan(config: StudyConfig, workers: int) -> list[tuple[int | None, str | None]]:
    """(threads, device) for each local worker: split the cores, or one worker per GPU."""
    import torch

    device = config.train.device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return [(config.train.threads, f"cuda:{index % gpus}") for index in range(workers)]
    threads = config.train.threads or max(1, (os.cpu_count() or 1) // workers)
    return [(threads, None)] * workers


def _stop(processes: list[Any]) -> None:
    """Interrupt local workers, give them STOP_GRACE_S to fail their trials, then kill them."""
    started = [process for process in processes if process.pid is not None]
    for process in started:
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        for process in started:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:  # also when a second Ctrl-C arrives while waiting
        for process in started:
            if process.is_alive():
                process.kill()
                process.join()


def run_workers(
    config: StudyConfig, url: str, workers: int, on_progress: ProgressCallback | None = None
) -> None:
    """Run ``workers`` local worker processes and report progress while they work.

    Interrupted (Ctrl-C, or SIGTERM turned into ``KeyboardInterrupt`` by the CLI),
    it interrupts the workers, which record their running trials as failed and
    queue those cells again, waits for them (``STOP_GRACE_S`` at most) and
    re-raises: no worker outlives the call, no trial stays running.

    Raises:
        WorkerDied: a worker process died (a signal, or out of memory); the others
            finished the work first.
    """
    plan = _worker_plan(config, workers)
    if workers == 1:
        run_worker(config, url, threads=plan[0][0], device=plan[0][1], on_progress=on_progress)
        return
    context = multiprocessing.get_context("spawn")  # torch and threads do not survive fork
    errors = context.SimpleQueue()
    verbosity = optuna.logging.get_verbosity()
    processes = [
        context.Process(
            target=_worker_process,
            args=(errors, verbosity, config, url),
            kwargs={"threads": threads, "device": device, "worker_index": index},
            name=f"balance-worker-{index}",
        )
        for index, (threads, device) in enumerate(plan)
    ]
    study = load_existing(config.name, open_storage(url))
    try:
        for process in processes:
            process.start()
        running = list(processes)
        while running:
            multiprocessing.connection.wait([p.sentinel for p in running], timeout=2.0)
            running = [process for process in running if process.is_alive()]
            if on_progress is not None:
                on_progress(progress_of(study, config))
    except BaseException:
        _stop(processes)
        raise
    if not errors.empty():
        raise errors.get()
    for index, process in enumerate(processes):
        if process.exitcode != 0:
            raise WorkerDied(
                f"local worker {index} (pid {process.pid}) died with exit code "
                f"{process.exitcode}; completed trials are kept, re-run to resume"
            )


def best_params(study: optuna.Study, config: StudyConfig) -> tuple[int, dict[str, Any]]:
    """The best completed trial's number and its full regularizer setting."""
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study: {config.name!r} has no completed trial yet") from None
    params = {name: best.params.get(name, getattr(config.train, name)) for name in SEARCHED}
    return best.number, params


def evaluate_on_test(
    study: optuna.Study,
    config: StudyConfig,
    data: Dataset,
    threads: int | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Train the chosen setting (and the baseline) once per seed and measure the test split.

    The test split chooses nothing: selection already happened on validation.
    The result is stored in the study, so it is computed once per best trial.
    The runs are independent: ``workers`` local processes (joblib) share them out.
    """
    number, params = best_params(study, config)
    stored = study.user_attrs.get("final")
    if stored and stored.get("trial") == number:
        return dict(stored)
    max_lrs = stored_max_lrs(study)
    chosen = config.train.model_copy(
        update={**params, "max_lr": max_lrs[params["batch_size"]], "threads": threads}
    )
    bases = {"chosen": chosen}
    baseline = config.baseline_config
    if baseline is not None:
        if baseline.max_lr is None:
            baseline = baseline.model_copy(update={"max_lr": max_lrs.get(baseline.batch_size)})
        bases["baseline"] = baseline.model_copy(update={"threads": threads})
    jobs = [
        (name, base.model_copy(update={"seed": base.seed + index}))
        for name, base in bases.items()
        for index in range(config.seeds)
    ]
    from joblib import Parallel, delayed

    # CUDA runs stay in this process: one device, no gain from sharing it out.
    on_cuda = chosen.device != "cpu" and "cuda" in str(resolve_device(chosen.device))
    n_jobs = 1 if on_cuda else max(1, min(workers, len(jobs)))
    runs = Parallel(n_jobs=n_jobs, backend="loky")(
        delayed(_test_run)(run_config, data) for _, run_config in jobs
    )
    final: dict[str, Any] = {"trial": number, "params": params}
    for name, base in bases.items():
        mine = [run for (owner, _), run in zip(jobs, runs, strict=True) if owner == name]
        final[name] = _test_summary(base, mine)
    if "baseline" in final:
        final["baseline"] = {"config": config.baseline, **final["baseline"]}
    study.set_user_attr("final", final)
    return final


def _test_run(config: Any, data: Dataset) -> dict[str, Any]:
    result = train(config, data=data, track_test=True)
    return {
        "seed": config.seed,
        "test_accuracy": result.test_accuracy,
        "steps": [m.step for m in result.epochs],
        "test_curve": [m.test_accuracy for m in result.epochs],
        "diverged": result.diverged is not None,
    }


def _test_summary(base: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    values = [run["test_accuracy"] for run in runs if run["test_accuracy"] is not None]
    mean = statistics.fmean(values) if values else None
    std = statistics.pstdev(values) if values else None
    return {"max_lr": base.max_lr, "test_accuracy": mean, "test_accuracy_std": std, "runs": runs}


def sweep(
    config: StudyConfig,
    *,
    storage: str | None = None,
    workers: int | None = None,
    root: Path = Path("reports"),
    on_progress: ProgressCallback | None = None,
    study_file: Path | None = None,
) -> SweepResult:
    """Run a whole study: stage 1 (max LR per batch size), stage 2 (the sweep), test, results.

    Re-running the same study on the same storage resumes it: stage 1 is not
    redone, completed cells are not run again, interrupted ones are. ``study_file``
    only names the file in the report.

    Example:
        >>> from balance import load_study_file, sweep
        >>> result = sweep(load_study_file("studies/mnist1d-cnn.toml"))  # doctest: +SKIP
    """
    from balance.analysis import write_results
    from balance.report import build_report

    started = time.perf_counter()
    data = preflight(config)
    url = storage_url(config, storage, root)
    prepare(config, url, data)
    n_workers = workers or config.workers
    run_workers(config, url, n_workers, on_progress)
    study = load_existing(config.name, open_storage(url))
    evaluate_on_test(
        study, config, data, threads=_worker_plan(config, n_workers)[0][0], workers=n_workers
    )
    out_dir = root / config.name
    summary = write_results(
        study, config, out_dir, url=url, wall_time=time.perf_counter() - started
    )
    report = build_report(config, storage=url, root=root, study_file=study_file)
    return SweepResult(
        study_name=config.name, storage=url, out_dir=out_dir, summary=summary, report=report
    )
