"""The grid queue and its recovery: queue the missing cells, hand interrupted ones back,
fail dead workers' trials, and count how far a study is."""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from balance import record
from balance.cells import cell_key
from balance.config import StudyConfig
from balance.record import TrialRecord, read_trials
from balance.storage import has_heartbeat
from balance.study._objective import worker_identity

DONE_STATES = ("complete", "pruned", "fail")
"""States of a trial that will not change again."""


@dataclass(frozen=True)
class Progress:
    """How far a study is: finished trials, the target, the best value, trials running."""

    done: int
    total: int
    best: float | None
    running: int


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_workers(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Mark RUNNING trials of dead local workers as failed (journal files have no heartbeat).

    A trial is stale when its recorded worker ran on this host and that process
    is gone. Database storages find stale trials by Optuna's heartbeat instead.
    """
    host = socket.gethostname()
    failed = []
    for trial in read_trials(study, (TrialState.RUNNING,)):
        worker = trial.worker
        if worker and worker["host"] == host and not _alive(int(worker["pid"])):
            record.fail_trial(storage, study, trial.number, "worker died")
            failed.append(trial.number)
    return failed


def _covers_cell(trial: TrialRecord) -> bool:
    # Completed, pruned, diverged, queued or running: an interrupted trial does not.
    return not trial.surplus and (
        trial.state in ("complete", "pruned", "waiting", "running") or trial.is_diverged
    )


def enqueue_missing_cells(study: optuna.Study, config: StudyConfig) -> int:
    """Queue every grid cell no trial covers yet; return how many were queued.

    A cell is covered by a trial that completed, was pruned, diverged, waits in
    the queue, or runs. A cell whose trial was interrupted is queued again.
    """
    covered = {trial.cell for trial in read_trials(study) if _covers_cell(trial) and trial.cell}
    queued = 0
    for cell in config.search.grid_cells():
        if cell_key(cell) not in covered:
            record.enqueue_cell(study, cell)
            queued += 1
    return queued


def requeue_interrupted(study: optuna.Study, config: StudyConfig) -> list[int]:
    """Queue again the grid cells this process's interrupted trials were training.

    A stopped worker hands its cell back, so the other workers (or a re-run) train
    it; each process queues only its own trials, so no cell is queued twice.
    """
    if config.sampler != "grid":
        return []
    me = worker_identity()
    trials = read_trials(study)
    done = {trial.requeued_from for trial in trials}
    requeued = []
    for trial in trials:
        if trial.state != "fail" or trial.worker != me or trial.number in done:
            continue
        if trial.diverged is not None or not trial.cell or trial.fail_reason:
            continue
        cell = {name: trial.params[name] for name in config.search.axes()}
        record.enqueue_cell(
            study,
            cell,
            requeued_from=trial.number,
            race_round=trial.race_round,
            seed_count=trial.seed_count,
        )
        requeued.append(trial.number)
    return requeued


def progress_of(study: optuna.Study, config: StudyConfig) -> Progress:
    """Count finished and running trials (surplus grid trials left out)."""
    trials = [trial for trial in read_trials(study) if not trial.surplus]
    done = sum(trial.state in DONE_STATES for trial in trials)
    running = sum(trial.state == "running" for trial in trials)
    values = [t.value for t in trials if t.state == "complete" and t.value is not None]
    if config.sampler == "grid":
        raced = [t for t in trials if t.race_round is not None]  # racing rounds' extra trials
        total = config.search.n_cells + len(raced)
        done = len({t.cell for t in trials if t.state in DONE_STATES and t.cell})
        done += sum(t.state in DONE_STATES for t in raced)
    else:
        total = 0 if config.n_trials is None else config.n_trials
    return Progress(done=done, total=total, best=max(values) if values else None, running=running)


def has_work(study: optuna.Study, config: StudyConfig) -> bool:
    """Whether a worker should claim another trial now."""
    if config.sampler == "grid":
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    # Interrupted and dead-worker trials do not use up the budget; diverged ones do.
    counted = sum(
        trial.state in ("complete", "pruned", "running") or trial.is_diverged
        for trial in read_trials(study)
    )
    return counted < (0 if config.n_trials is None else config.n_trials)


def others_running(study: optuna.Study, storage: BaseStorage) -> bool:
    """Whether trials may still come back to the queue: some run, and a heartbeat watches them.

    Fails the trials whose heartbeat went stale; the retry callback queues a copy of
    each. Without a heartbeat (journal files) a dead worker's trial cannot be told
    from a live one, so nobody waits for it (re-running ``balance sweep`` queues it).
    """
    if not has_heartbeat(storage):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
