"""Worker scaling: trials per hour with 2 local workers over 1 worker, on all cores.

A small grid study (MNIST-1D, cnn1d, batch 100, a fixed max LR so no range test
runs; 4 weight decays x 3 dropouts, one seed, a few epochs a trial) is run from
scratch on the default journal storage in a temporary folder by
``balance.study.run_workers`` with 1 and with 2 workers. Threads are split as
``balance sweep`` splits them: 1 worker gets every core, 2 workers one each.

- ``steady``: trials per hour over the span from the first trial's start to the
  last one's end (what a long study sees);
- ``wall``: trials per hour over the whole ``run_workers`` call, worker process
  start-up included (each multi-worker call starts its own processes, as every
  ``balance sweep`` does).

Each repeat runs the variants back to back (order rotating); the figure is the
median of the per-repeat ratios. Target: at least 1.7 on 2 cores. For reference,
a third variant holds the single worker to one thread: 2 workers over it is the
scaling of the worker processes alone, and it over the 2-thread worker is what
torch's intra-op threads already gain on one trial.

Run (about 5 minutes):
    python benchmarks/worker_scaling.py
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from _common import headline, interleaved, machine, median, parser, spread, write_result
from optuna.trial import TrialState

from balance.config import StudyConfig, build
from balance.study import (
    create_or_resume,
    enqueue_missing_cells,
    open_storage,
    preflight,
    run_workers,
)
from balance.study._sweep import fix_max_lrs

NAME = "worker_scaling"
TARGET = 1.7


def study_config(name: str, quick: bool, threads: int | None = None) -> StudyConfig:
    search: dict[str, Any] = {
        "weight_decay": [0.0, 1e-4] if quick else [0.0, 1e-4, 5e-4, 2e-3],
        "dropout": [0.0] if quick else [0.0, 0.1, 0.2],
    }
    values = {
        "name": name,
        "sampler": "grid",
        "seeds": 1,
        "train": {
            "data": "mnist1d",
            "model": "cnn1d",
            "batch_size": 100,
            "epochs": 1 if quick else 4,
            "max_lr": 0.1,
            "threads": threads,
        },
        "search": search,
    }
    config: StudyConfig = build(StudyConfig, values)
    return config


def run_once(
    workers: int, root: Path, quick: bool, counter: list[int], threads: int | None = None
) -> dict[str, Any]:
    counter[0] += 1
    config = study_config(f"scaling-{workers}w-{counter[0]}", quick, threads)
    url = str(root / config.name / "study.journal")
    (root / config.name).mkdir(parents=True)
    data = preflight(config)
    study = create_or_resume(config, url)
    fix_max_lrs(study, config, data)
    enqueue_missing_cells(study, config)
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
        "trials_per_hour_wall": 3600 * len(trials) / wall,
        "trials_per_hour_steady": 3600 * len(trials) / span,
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = args.repeats or (1 if args.quick else 3)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    counter = [0]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        runs = interleaved(
            {
                "1": lambda: run_once(1, root, args.quick, counter),
                "2": lambda: run_once(2, root, args.quick, counter),
                "1x1": lambda: run_once(1, root, args.quick, counter, threads=1),
            },
            repeats,
        )
    ratios: dict[str, list[float]] = {}
    for kind in ("steady", "wall"):
        ratios[kind] = [
            two[f"trials_per_hour_{kind}"] / one[f"trials_per_hour_{kind}"]
            for one, two in zip(runs["1"], runs["2"], strict=True)
        ]
    # Process scaling alone: 2 workers against 1 worker held to one thread.
    ratios["processes"] = [
        two["trials_per_hour_steady"] / one["trials_per_hour_steady"]
        for one, two in zip(runs["1x1"], runs["2"], strict=True)
    ]
    ratios["threads"] = [
        two["trials_per_hour_steady"] / one["trials_per_hour_steady"]
        for one, two in zip(runs["1x1"], runs["1"], strict=True)
    ]
    steady, wall = median(ratios["steady"]), median(ratios["wall"])
    low, high = spread(ratios["steady"])
    one_tph = median([r["trials_per_hour_steady"] for r in runs["1"]])
    two_tph = median([r["trials_per_hour_steady"] for r in runs["2"]])
    headlines = [
        headline(
            f"trials/hour, 2 workers (1 thread each) / 1 worker ({os.cpu_count()} threads), "
            f"{runs['1'][0]['trials']}-trial grid",
            f"{steady:.2f} (median of {repeats}; {low:.2f}-{high:.2f}; {two_tph:,.0f} vs "
            f"{one_tph:,.0f} trials/h; with cold worker start-up {wall:.2f})",
            f">= {TARGET}",
            steady >= TARGET,
        ),
        headline(
            "trials/hour, 2 workers (1 thread each) / 1 worker held to 1 thread "
            "(process scaling alone)",
            f"{median(ratios['processes']):.2f} (median of {repeats}; 1 worker gains "
            f"{median(ratios['threads']):.2f}x from its second thread)",
            "(reference)",
        ),
    ]
    for row in headlines:
        print(row["measure"], row["value"], flush=True)
    write_result(
        NAME,
        {
            "repeats": repeats,
            "target": TARGET,
            "study": study_config("scaling", args.quick).model_dump(mode="json"),
            "runs": runs,
            "ratio_steady": steady,
            "ratio_steady_repeats": ratios["steady"],
            "ratio_wall": wall,
            "ratio_wall_repeats": ratios["wall"],
            "ratio_processes": median(ratios["processes"]),
            "ratio_processes_repeats": ratios["processes"],
            "ratio_threads_repeats": ratios["threads"],
        },
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
