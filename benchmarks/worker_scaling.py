"""Worker scaling: trials per hour with 2 local workers over 1 worker, on all cores.

A small grid study (4 weight decays x 3 dropouts, one seed, a fixed max LR so no
range test runs) is run from scratch on the default journal storage in a
temporary folder by ``balance.study.run_workers`` with 1 and with 2 workers.
Threads are split as ``balance sweep`` splits them: 1 worker gets every core,
2 workers one each. Two cases:

- ``mnist1d-cnn1d``: the default study's model and batch (100), 10 epochs a trial;
  torch's intra-op threads already speed one trial up on 2 cores;
- ``digits-mlp``: a small MLP at batch 32, 30 epochs a trial, where a second
  intra-op thread gains little and only processes can use the second core.

Figures, each the median of the per-repeat ratios:

- ``wall`` (the headline): trials per hour over the whole ``run_workers`` call,
  worker process start-up included (each multi-worker call starts its own
  processes, as every ``balance sweep`` does); target at least 1.7;
- ``steady``: trials per hour over the span from the first trial's start to the
  last one's end (what a very long study approaches), beside it.

Start-up is the time from the call to the first trial's start: spawning each
worker's interpreter, importing torch and Optuna, loading the data and building
the objective (whose throwaway optimizer imports ``torch._dynamo``). A single
worker runs in the calling process, so its start-up is only the last two.

For reference, a third variant holds the single worker to one thread: 2 workers
over it is the scaling of the worker processes alone (at most 2 on 2 cores), and
it over the 2-thread worker is what intra-op threads gain on one trial (``g``).
The steady ratio can be at most 2 / g: a single worker that already uses both
cores well leaves workers less to win.

Each repeat runs the variants back to back (order rotating).

Run (about 10 minutes):
    python benchmarks/worker_scaling.py
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from _common import headline, interleaved, machine, median, parser, spread, write_result
from optuna.trial import TrialState

from balance.config import StudyConfig, build
from balance.pipeline import preflight
from balance.storage import open_storage
from balance.study import create_or_resume, enqueue_missing_cells, fix_max_lrs, run_workers

NAME = "worker_scaling"
TARGET = 1.7


CASES: dict[str, dict[str, Any]] = {
    # [train] of each case; quick runs cut the epochs to 1
    "mnist1d-cnn1d": {"data": "mnist1d", "model": "cnn1d", "batch_size": 100, "epochs": 10},
    "digits-mlp": {"data": "digits", "model": "mlp", "batch_size": 32, "epochs": 30},
}


def study_config(case: str, name: str, quick: bool, threads: int | None = None) -> StudyConfig:
    search: dict[str, Any] = {
        "weight_decay": [0.0, 1e-4] if quick else [0.0, 1e-4, 5e-4, 2e-3],
        "dropout": [0.0] if quick else [0.0, 0.1, 0.2],
    }
    train = {**CASES[case], "max_lr": 0.1, "threads": threads}
    if quick:
        train["epochs"] = 1
    values = {"name": name, "sampler": "grid", "seeds": 1, "train": train, "search": search}
    config: StudyConfig = build(StudyConfig, values)
    return config


def run_once(
    case: str,
    workers: int,
    root: Path,
    quick: bool,
    counter: list[int],
    threads: int | None = None,
) -> dict[str, Any]:
    counter[0] += 1
    config = study_config(case, f"scaling-{workers}w-{counter[0]}", quick, threads)
    url = str(root / config.name / "study.journal")
    (root / config.name).mkdir(parents=True)
    data = preflight(config)
    study = create_or_resume(config, url)
    fix_max_lrs(study, config, data)
    enqueue_missing_cells(study, config)
    called = datetime.now()  # Optuna stamps trials with naive local time
    started = time.perf_counter()
    run_workers(config, url, workers)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=config.name, storage=open_storage(url))
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    first = min(t.datetime_start for t in trials if t.datetime_start is not None)
    last = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    span = (last - first).total_seconds()
    return {
        "workers": workers,
        "trials": len(trials),
        "wall_s": wall,
        "span_s": span,
        "startup_s": (first - called).total_seconds(),
        "trials_per_hour_wall": 3600 * len(trials) / wall,
        "trials_per_hour_steady": 3600 * len(trials) / span,
    }


def measure(case: str, root: Path, quick: bool, repeats: int) -> dict[str, Any]:
    """Run the three variants of one case ``repeats`` times; their runs and ratios."""
    counter = [0]
    runs = interleaved(
        {
            "1": lambda: run_once(case, 1, root, quick, counter),
            "2": lambda: run_once(case, 2, root, quick, counter),
            "1x1": lambda: run_once(case, 1, root, quick, counter, threads=1),
        },
        repeats,
    )

    def ratios(top: str, bottom: str, kind: str = "steady") -> list[float]:
        key = f"trials_per_hour_{kind}"
        return [high[key] / low[key] for low, high in zip(runs[bottom], runs[top], strict=True)]

    return {
        "study": study_config(case, "scaling", quick).model_dump(mode="json"),
        "runs": runs,
        "ratio_steady_repeats": ratios("2", "1"),
        "ratio_wall_repeats": ratios("2", "1", "wall"),
        # Process scaling alone: 2 workers against 1 worker held to one thread.
        "ratio_processes_repeats": ratios("2", "1x1"),
        "ratio_threads_repeats": ratios("1", "1x1"),
    }


def headlines_of(case: str, out: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    steady, wall = median(out["ratio_steady_repeats"]), median(out["ratio_wall_repeats"])
    low, high = spread(out["ratio_wall_repeats"])
    startup = {n: median([r["startup_s"] for r in out["runs"][n]]) for n in ("1", "2")}
    gain = median(out["ratio_threads_repeats"])
    one_tph = median([r["trials_per_hour_wall"] for r in out["runs"]["1"]])
    two_tph = median([r["trials_per_hour_wall"] for r in out["runs"]["2"]])
    trials = out["runs"]["1"][0]["trials"]
    return [
        headline(
            f"{case}: trials/hour, 2 workers (1 thread each) / 1 worker ({os.cpu_count()} "
            f"threads), {trials}-trial grid, worker start-up included",
            f"{wall:.2f} (median of {repeats}; {low:.2f}-{high:.2f}; {two_tph:,.0f} vs "
            f"{one_tph:,.0f} trials/h; start-up {startup['2']:.1f} s vs {startup['1']:.1f} s; "
            f"steady state {steady:.2f}, at most 2 / {gain:.2f} = {2 / gain:.2f} here, as 1 "
            f"worker gains {gain:.2f}x from its second thread)",
            f">= {TARGET}",
            wall >= TARGET,
        ),
        headline(
            f"{case}: trials/hour, 2 workers (1 thread each) / 1 worker held to 1 thread "
            "(process scaling alone)",
            f"{median(out['ratio_processes_repeats']):.2f} (median of {repeats}; at most 2)",
            "(reference)",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    arguments.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = args.repeats or (1 if args.quick else 3)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    results, headlines = {}, []
    # --quick: one case (a smoke run of every code path, its numbers meaningless)
    for case in args.cases or (list(CASES)[-1:] if args.quick else list(CASES)):
        with tempfile.TemporaryDirectory() as folder:
            results[case] = measure(case, Path(folder), args.quick, repeats)
        rows = headlines_of(case, results[case], repeats)
        for row in rows:
            print(row["measure"], row["value"], flush=True)
        headlines += rows
    write_result(
        NAME,
        {"repeats": repeats, "target": TARGET, "cases": results},
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
