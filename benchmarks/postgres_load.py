"""PostgreSQL under load: 4 worker processes x 200 very short trials, nothing lost or repeated.

The headline runs the product: a grid study of 800 cells (200 weight decays x 4
dropouts; digits, an MLP, one epoch of 6 steps at a given max LR, so a trial is
mostly storage work) queued by balance's own ``prepare`` (what ``balance sweep``
does before its workers), then trained by 4 ``balance worker`` processes (the
CLI, ``--threads 1``). Afterwards every cell must be complete exactly once
(``lost`` and ``repeated`` both 0, read through balance's record and grid audit),
with no trial failed, running or waiting. ``trials_per_second`` is 800 over the
wall time from starting the workers to the last one's exit (their start-up
included); ``steady_trials_per_second`` over the span from the first trial's
start to the last one's end.

Beside it, as a reference for what Optuna's own loop costs, the earlier figure:
The storage is the one balance opens (``balance.storage.open_storage``: Optuna's RDB
storage with the 20 s heartbeat and the retry callback). 800 trials are queued,
each fixing a distinct ``task`` number, as ``balance sweep`` queues grid cells; each
worker process then runs ``study.optimize(objective, n_trials=200)`` with an
objective that only reads its task. A worker that found the queue empty would get
a sampler's trial with a random task: a repeat. Afterwards every task must be
complete exactly once (``lost`` and ``repeated`` both 0), with no trial failed,
running or waiting.

- ``trials_per_second``: 800 over the wall time from the moment all workers are
  ready (storage open, study loaded) to the last one's end;
- ``storage_share``: the share of the workers' time spent inside the storage's
  methods (outermost calls of the worker's own thread, heartbeat thread apart);
  the rest is Optuna's own Python (the objective does nothing else).

Without ``--url`` it starts a throwaway server (tests/postgres_server.py, fsync on,
as a real server runs) and creates a database in it; with ``--url`` it uses that
database and a fresh study name.

Run (about a minute on 2 cores):
    python benchmarks/postgres_load.py
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import statistics
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from _common import headline, machine, parser, write_result
from optuna.trial import TrialState

from balance.pipeline import load_study_record, preflight, prepare
from balance.storage import open_storage

NAME = "postgres_load"
TESTS = Path(__file__).parent.parent / "tests"


class StorageClock:
    """Time spent in a storage's methods, outermost calls of one thread only."""

    def __init__(self, storage: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.by_method: dict[str, list[float]] = {}  # name: [seconds, calls]
        self._depth = 0
        self._thread = threading.get_ident()
        for name in dir(storage):
            method = getattr(storage, name)
            if name.startswith("__") or not inspect.ismethod(method):
                continue
            setattr(storage, name, self._timed(name, method))

    def reset(self) -> None:
        self.seconds, self.calls, self.by_method = 0.0, 0, {}

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._thread or self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                self.seconds += seconds
                self.calls += 1
                entry = self.by_method.setdefault(name, [0.0, 0])
                entry[0] += seconds
                entry[1] += 1
                self._depth -= 1

        return timed


def worker(url: str, study_name: str, trials: int, ready: Any, go: Any, results: Any) -> None:
    """One worker process: open the storage, wait for the start, run its trials, report."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = open_storage(url)
    clock = StorageClock(storage)
    study = optuna.load_study(study_name=study_name, storage=storage)

    def objective(trial: optuna.Trial) -> float:
        return float(trial.suggest_int("task", 0, 10**9))  # the queued task, or a repeat

    ready.release()
    go.wait()
    clock.reset()  # loading the study is set-up, not load
    started = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    study.optimize(objective, n_trials=trials, gc_after_trial=False)
    ended = time.monotonic()
    results.put(
        {
            "seconds": ended - started,
            "ended": ended,
            "storage_seconds": clock.seconds,
            "storage_calls": clock.calls,
            "storage_by_method": clock.by_method,
        }
    )


@contextmanager
def database(url: str | None) -> Iterator[tuple[str, str]]:
    """(database URL, where it came from): the given one, or a throwaway server's."""
    if url:
        yield url, "given"
        return
    sys.path.insert(0, str(TESTS))
    from postgres_server import create_database, throwaway_server

    with throwaway_server(durable=True) as admin:
        yield create_database(admin, "balance_load"), "throwaway server, fsync on"


def run(url: str, workers: int, trials: int) -> dict[str, Any]:
    """Queue ``workers * trials`` tasks, run the workers, count what came back."""
    total = workers * trials
    study_name = f"load-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=study_name, storage=open_storage(url))
    for task in range(total):
        study.enqueue_trial({"task": task})
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Semaphore(0), context.Event(), context.SimpleQueue()
    processes = [
        context.Process(target=worker, args=(url, study_name, trials, ready, go, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.acquire()
    started = time.monotonic()
    go.set()
    for process in processes:
        process.join()
    assert all(process.exitcode == 0 for process in processes), "a worker failed"
    per_worker = [results.get() for _ in processes]
    wall = max(w.pop("ended") for w in per_worker) - started

    trials_found = study.get_trials(deepcopy=False)
    complete = [t for t in trials_found if t.state == TrialState.COMPLETE]
    counts: dict[int, int] = {}
    for trial in complete:
        counts[trial.params["task"]] = counts.get(trial.params["task"], 0) + 1
    busy = sum(w["seconds"] for w in per_worker)
    by_method: dict[str, list[float]] = {}
    for each in per_worker:
        for name, (seconds, calls) in each.pop("storage_by_method").items():
            entry = by_method.setdefault(name, [0.0, 0])
            entry[0] += seconds
            entry[1] += calls
    return {
        "workers": workers,
        "trials_per_worker": trials,
        "queued": total,
        "completed": len(complete),
        "lost": sum(task not in counts for task in range(total)),
        "repeated": sum(count - 1 for count in counts.values() if count > 1),
        "other_states": {
            state.name: sum(t.state == state for t in trials_found)
            for state in (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
        },
        "wall_seconds": wall,
        "trials_per_second": total / wall,
        "storage_share": sum(w["storage_seconds"] for w in per_worker) / busy,
        "storage_calls_per_trial": sum(w["storage_calls"] for w in per_worker) / total,
        # where the storage time goes: method -> share of worker time, calls per trial
        "storage_methods": {
            name: {"share": seconds / busy, "calls_per_trial": calls / total}
            for name, (seconds, calls) in sorted(by_method.items(), key=lambda kv: -kv[1][0])
        },
        "ms_per_trial_per_worker": statistics.fmean(
            1000 * w["seconds"] / trials for w in per_worker
        ),
        "per_worker": per_worker,
    }


def run_balance_workers(url: str, workers: int, trials: int) -> dict[str, Any]:
    """Queue ``workers * trials`` grid cells with balance, train them with ``balance worker``."""
    import subprocess
    import tempfile

    sys.path.insert(0, str(TESTS))
    from study_files import subprocess_env, tiny_values, toml_text

    from balance.analysis import audit, trials_frame
    from balance.study_file import load_study_file

    total = workers * trials
    values = tiny_values(  # digits, an MLP, one epoch at a given max LR, one seed
        f"load-{uuid.uuid4().hex[:8]}",
        train={"batch_size": 256},  # 6 steps a trial: mostly storage work
        search={
            "weight_decay": [index * 1e-6 for index in range(trials)],
            "dropout": [index / (2 * workers) for index in range(workers)],
        },
    )
    with tempfile.TemporaryDirectory() as folder:
        study_file = Path(folder) / "load.toml"
        study_file.write_text(toml_text(values))
        config = load_study_file(study_file)
        prepare(config, url, preflight(config))
        command = [sys.executable, "-m", "balance.cli", "worker", str(study_file)]
        command += ["--storage", url, "--threads", "1"]
        started = time.monotonic()
        processes = [
            subprocess.Popen(
                command,
                env=subprocess_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        errors = [process.communicate()[1] for process in processes]
        wall = time.monotonic() - started
        codes = [process.returncode for process in processes]
        if any(codes):
            raise RuntimeError(
                f"a balance worker failed: {codes} {errors[codes.index(max(codes))]}"
            )
        record = load_study_record(config, storage=url)
    frame = trials_frame(record)
    found = audit(frame, config)
    # A surplus trial (a worker found the queue empty and Optuna made one up) trains
    # nothing and is pruned at once: counted apart, as the grid audit does.
    states = frame.loc[~frame["surplus"], "state"].value_counts().to_dict()
    span = record.span_s() or math.nan
    return {
        "workers": workers,
        "trials_per_worker": trials,
        "queued": total,
        "completed": int(states.get("complete", 0)),
        "lost": len(found["missing"]),
        "repeated": len(found["duplicated"]),
        "other_states": {k: int(v) for k, v in states.items() if k != "complete"},
        "surplus_trials": found["surplus_trials"],
        "wall_seconds": wall,
        "trials_per_second": total / wall,
        "steady_seconds": span,
        "steady_trials_per_second": total / span,
        "trials_by_worker": frame[~frame["surplus"]]
        .groupby([str(t.worker) for t in record.trials if not t.surplus])
        .size()
        .tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--url", help="a PostgreSQL database URL (default: throwaway server)")
    arguments.add_argument("--workers", type=int, default=None, help="default 4 (quick: 2)")
    arguments.add_argument("--trials", type=int, default=None, help="per worker (quick: 5)")
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    trials = args.trials or (5 if args.quick else 200)
    args.workers = args.workers or (2 if args.quick else 4)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with database(args.url) as (url, source):
        product = run_balance_workers(url, args.workers, trials)
        result = run(url, args.workers, trials)
    result["server"] = source
    result["balance_workers"] = product
    intact = product["lost"] == 0 and product["repeated"] == 0
    intact = intact and not product["other_states"] and product["completed"] == product["queued"]
    headlines = [
        headline(
            f"PostgreSQL, {args.workers} `balance worker` processes x {trials} grid cells: "
            "lost / repeated",
            f"{product['lost']} / {product['repeated']} of {product['queued']} "
            f"(trials per worker {product['trials_by_worker']})",
            "0 / 0",
            intact,
        ),
        headline(
            f"PostgreSQL trials/s ({args.workers} `balance worker` processes, 6-step trials)",
            f"{product['trials_per_second']:.1f} trials/s with start-up "
            f"({product['wall_seconds']:.1f} s), {product['steady_trials_per_second']:.1f} "
            "trials/s from the first trial's start to the last one's end",
        ),
        headline(
            f"reference, Optuna's own loop: trials/s ({args.workers} workers, empty objective)",
            f"{result['trials_per_second']:.1f} trials/s; storage {result['storage_share']:.0%} "
            f"of worker time, {result['storage_calls_per_trial']:.1f} storage calls a trial; "
            f"lost / repeated {result['lost']} / {result['repeated']}",
        ),
    ]
    for row in headlines:
        print(row["measure"], row["value"], flush=True)
    write_result(
        NAME,
        result,
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    return 0 if intact else 1


if __name__ == "__main__":
    raise SystemExit(main())
