"""Worker processes: each claims queued or sampled trials and trains them until none is left."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import optuna

from balance.config import ConfigError, PackSize, StudyConfig, pack_problem
from balance.models import ModelFactory
from balance.objects import DataArgument, TrainingData, check_picklable, resolve_data
from balance.record import StageOne
from balance.storage import open_existing
from balance.study._objective import Objective, TrainingDiverged
from balance.study._packing import PackedWorker, resolve_pack
from balance.study._queue import (
    Progress,
    has_work,
    others_running,
    progress_of,
    requeue_interrupted,
)
from balance.study._stopping import request_stop, stop_deferred
from balance.study._study import make_pruner, make_sampler

# A stopped local worker records its interrupted trial as failed and queues the cell
# again: milliseconds of storage writes, so 30 s is a wide margin before it is killed.
STOP_GRACE_S = 30
# An idle worker on a database storage checks this often whether a running trial went
# stale (its heartbeat is 20 s; checking ten times as often costs a query each time).
WAIT_POLL_S = 2.0
# The parent checks its workers and redraws progress this often.
PROGRESS_POLL_S = 2.0

ProgressCallback = Callable[[Progress], None]


class WorkerDied(RuntimeError):
    """A local worker process ended without finishing (killed by a signal, out of memory)."""


def load_study_data(config: StudyConfig, data: DataArgument | None = None) -> TrainingData:
    """The study's data set (or the ``data`` object standing in for it), split as its base
    run says."""
    return resolve_data(data, config.train)


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
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
    pack: PackSize | None = None,
) -> int:
    """Join the study at ``url`` and run trials until none is left; return how many ran.

    The study must exist and stage 1 must be done (``balance sweep`` does both).
    Several workers, on this machine or others, may run at once. On a database
    storage a worker with nothing left to do waits while other workers' trials
    run: if one of them dies, its trial is failed after the heartbeat's grace
    period and queued again, and a waiting worker trains it. Interrupted
    (``KeyboardInterrupt``), a worker queues its cell again and re-raises.
    ``data`` and ``model``: Python objects in place of ``train.data`` and
    ``train.model`` (:mod:`balance.objects`); every worker of the study needs the same.
    ``pack`` (default: the study file's): train up to that many queued grid trials at
    once as one packed model (:class:`balance.study._packing.PackedWorker`).
    """
    pack = config.pack if pack is None else pack
    problem = pack_problem(config, pack)
    if problem is not None:
        raise ConfigError(problem)
    study, storage = open_existing(config.name, url)
    study.sampler = make_sampler(config, worker_index)
    study.pruner = make_pruner(config)
    stage = StageOne.from_study(study)
    if not stage.done:
        raise ConfigError(f"study: {config.name!r} has no max LR yet; run `balance sweep` first")
    objective = Objective(
        config,
        load_study_data(config, data),
        stage.max_lrs,
        threads=threads,
        device=device,
        model=model,
    )
    pack = resolve_pack(pack, objective)
    packer = PackedWorker(study, storage, objective, pack) if pack > 1 else None
    ran = 0
    try:
        while True:
            if packer is not None and packer.has_work():
                ran += packer.run_pack()
                if on_progress is not None:
                    on_progress(progress_of(study, config))
            elif packer is None and has_work(study, config):
                run_one_trial(study, objective)
                ran += 1
                if on_progress is not None:
                    on_progress(progress_of(study, config))
            elif others_running(study, storage):
                time.sleep(WAIT_POLL_S)  # a stale trial comes back queued
            else:
                return ran
    except KeyboardInterrupt:
        requeue_interrupted(study, config)
        raise
    finally:
        if packer is not None:
            packer.close()


def _stop_once(signum: int, frame: Any) -> None:
    # The first SIGINT or SIGTERM interrupts the trial's training (Optuna records it as
    # failed, quietly: the stop was asked for); later ones are ignored so they cannot cut
    # that write short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    request_stop()


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


def worker_plan(config: StudyConfig, workers: int) -> list[tuple[int | None, str | None]]:
    """(threads, device) for each local worker: split the cores, or one worker per GPU."""
    import torch

    device = config.train.device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return [(config.train.threads, f"cuda:{index % gpus}") for index in range(workers)]
    threads = config.train.threads
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
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
    config: StudyConfig,
    url: str,
    workers: int,
    on_progress: ProgressCallback | None = None,
    *,
    data: DataArgument | None = None,
    model: ModelFactory | None = None,
    pack: PackSize | None = None,
) -> None:
    """Run ``workers`` local worker processes and report progress while they work.

    Interrupted (Ctrl-C, or SIGTERM turned into ``KeyboardInterrupt`` by the CLI),
    it interrupts the workers, which record their running trials as failed and
    queue those cells again, waits for them (``STOP_GRACE_S`` at most) and
    re-raises: no worker outlives the call, no trial stays running. ``data`` and
    ``model`` reach each process by pickling (:func:`balance.objects.check_picklable`).

    Raises:
        WorkerDied: a worker process died (a signal, or out of memory); the others
            finished the work first.
    """
    plan = worker_plan(config, workers)
    objects: dict[str, Any] = {"data": data, "model": model, "pack": pack}
    if workers == 1:
        threads, device = plan[0]
        run_worker(config, url, threads=threads, device=device, on_progress=on_progress, **objects)
        return
    check_picklable(workers, model=model, data=data)
    context = multiprocessing.get_context("spawn")  # torch and threads do not survive fork
    errors = context.SimpleQueue()
    verbosity = optuna.logging.get_verbosity()
    processes = [
        context.Process(
            target=_worker_process,
            args=(errors, verbosity, config, url),
            kwargs={"threads": threads, "device": device, "worker_index": index, **objects},
            name=f"balance-worker-{index}",
        )
        for index, (threads, device) in enumerate(plan)
    ]
    study, _ = open_existing(config.name, url)
    try:
        for process in processes:
            process.start()
        running = list(processes)
        while running:
            multiprocessing.connection.wait([p.sentinel for p in running], PROGRESS_POLL_S)
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
