"""End to end: wall time of the default study and the share of it that is not training.

Runs ``balance.study.sweep`` (what ``balance sweep studies/mnist1d-cnn.toml``
calls) from scratch into a temporary folder, with the study's own 2 workers, and
times each phase by wrapping the functions ``sweep`` calls (the wrappers only
read the clock):

- data and checks (``preflight``), storage (``create_or_resume``), range tests
  (``fix_max_lrs``), queueing (``fail_dead_workers``, ``enqueue_missing_cells``);
- trials (``run_workers``), split with the trials' own durations into time
  inside trials (training, per-epoch validation and the trial's storage writes;
  summed over trials and divided by the workers) and the rest (worker process
  start-up, sampling, waiting for the last trial);
- test evaluation (``evaluate_on_test``: training the chosen setting and the
  baseline), results files (``write_results``) and the HTML report
  (``build_report``).

"Training" is the time inside trials plus the test evaluation; everything else
(including the CLI's start-up, timed apart as a fresh interpreter importing what
``balance sweep`` imports: ``SWEEP_IMPORTS``)
is "not training". The optimizer steps alone (``TrainResult.train_time`` of every
trial run, over the workers) are given beside it. ``--quick`` runs a tiny digits
study instead.

Run (about 15 minutes: 3 repeats of a 4-5 minute study):
    python benchmarks/end_to_end.py
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from _common import headline, machine, median, parser, spread, write_result

import balance.pipeline
from balance.config import StudyConfig, build
from balance.pipeline import sweep
from balance.record import read_trials
from balance.storage import open_existing
from balance.study_file import load_study_file

NAME = "end_to_end"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STUDY = ROOT / "studies" / "mnist1d-cnn.toml"
TIMED = {
    balance.pipeline: (
        "preflight",
        "create_or_resume",
        "fix_max_lrs",
        "fail_dead_workers",
        "enqueue_missing_cells",
        "run_workers",
        "open_existing",
        "evaluate_on_test",
        "load_record",
        "write_results",
        "build_report",
    ),
}
TRAINING_PHASES = ("evaluate_on_test",)


def quick_study(name: str) -> StudyConfig:
    values: dict[str, Any] = {
        "name": name,
        "sampler": "grid",
        "seeds": 1,
        "workers": 1,
        "train": {"data": "digits", "model": "mlp", "epochs": 2, "batch_size": 64, "threads": 1},
        "range_test": {"num_steps": 30},
        "search": {"weight_decay": [0.0, 1e-3], "dropout": [0.0, 0.2]},
        "baseline": {"optimizer": "adam", "policy": "constant", "max_lr": 1e-2},
    }
    config: StudyConfig = build(StudyConfig, values)
    return config


@contextlib.contextmanager
def phase_timers() -> Iterator[dict[str, float]]:
    """Wrap the functions ``sweep`` calls so each adds its wall time to the yielded dict."""
    seconds: dict[str, float] = {}
    originals: list[tuple[Any, str, Any]] = []

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    try:
        for module, names in TIMED.items():
            for name in names:
                if hasattr(module, name):
                    original = getattr(module, name)
                    originals.append((module, name, original))
                    setattr(module, name, timed(name, original))
        yield seconds
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


# What `balance sweep` imports before it does any work: the CLI, then (lazily, in the
# command) the pipeline with torch, Optuna, pandas and the report's plotting, and tqdm.
SWEEP_IMPORTS = "import balance.cli, balance.pipeline, tqdm"


def cli_startup(repeats: int) -> float:
    """Median seconds of a fresh interpreter importing what ``balance sweep`` imports."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", SWEEP_IMPORTS], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return median(times)


def run_once(config: StudyConfig, root: Path) -> dict[str, Any]:
    with phase_timers() as phases:
        started = time.perf_counter()
        result = sweep(config, root=root)
        total = time.perf_counter() - started
    study, _ = open_existing(config.name, result.storage)
    trials = [t for t in read_trials(study) if t.duration_s is not None]
    in_trials = sum(t.duration_s for t in trials if t.duration_s is not None)
    steps_time = sum(run.train_time or 0.0 for t in trials for run in t.runs)
    workers = config.workers
    trials_wall = phases.get("run_workers", 0.0)
    inside = min(in_trials / workers, trials_wall)
    training = inside + sum(phases.get(name, 0.0) for name in TRAINING_PHASES)
    return {
        "total_s": total,
        "phases_s": phases,
        "other_s": total - sum(phases.values()),
        "trials": len(trials),
        "trial_seconds_summed": in_trials,
        "inside_trials_s": inside,
        "trials_overhead_s": trials_wall - inside,
        "optimizer_steps_s": steps_time / workers,
        "training_s": training,
        "test_accuracy": result.summary.get("test", {}).get("chosen", {}).get("test_accuracy"),
        "best_val_accuracy": (result.summary.get("best") or {}).get("val_accuracy"),
        # The grid as search_efficiency.py compares TPE with it (saves it a rerun).
        "grid": {
            "best_val_accuracy": (result.summary.get("best") or {}).get("val_accuracy"),
            "steps_total": result.summary.get("steps_total"),
            "max_lr": result.summary.get("max_lr"),
            "states": result.summary.get("trials"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    arguments.add_argument("--study", type=Path, default=DEFAULT_STUDY)
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="balance.range_test")
    repeats = args.repeats or (1 if args.quick else 3)
    startup = cli_startup(1 if args.quick else 3)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            root = Path(folder) / f"repeat-{repeat}"
            config = quick_study("e2e") if args.quick else load_study_file(args.study)
            run = run_once(config, root)
            run["total_with_cli_s"] = run["total_s"] + startup
            run["not_training_share"] = 1 - run["training_s"] / run["total_with_cli_s"]
            runs.append(run)
            print(
                f"repeat {repeat}: {run['total_with_cli_s']:.1f} s, not training "
                f"{run['not_training_share']:.1%}",
                flush=True,
            )
    wall = median([run["total_with_cli_s"] for run in runs])
    share = median([run["not_training_share"] for run in runs])
    phases = {
        name: median([run["phases_s"].get(name, 0.0) for run in runs])
        for name in {key for run in runs for key in run["phases_s"]}
    }
    parts = {
        "CLI start-up": startup,
        "range tests": phases.get("fix_max_lrs", 0.0),
        "storage and queue": sum(
            phases.get(name, 0.0)
            for name in ("create_or_resume", "fail_dead_workers", "enqueue_missing_cells")
        )
        + phases.get("open_existing", 0.0)
        + phases.get("load_record", 0.0),
        "data and checks": phases.get("preflight", 0.0),
        "workers outside trials": median([run["trials_overhead_s"] for run in runs]),
        "results files": phases.get("write_results", 0.0),
        "report": phases.get("build_report", 0.0),
    }
    low, high = spread([run["total_with_cli_s"] for run in runs])
    minutes, seconds = divmod(wall, 60)
    study_name = "tiny digits study" if args.quick else args.study.name
    tests = [run["test_accuracy"] for run in runs if run["test_accuracy"] is not None]
    headlines = [
        headline(
            f"{study_name}: wall time of the sweep (CLI start-up included)",
            f"{int(minutes)} min {seconds:.0f} s (median of {repeats}; {low:.0f}-{high:.0f} s; "
            f"test accuracy {statistics.fmean(tests) if tests else float('nan'):.4f})",
            "<= 10 min (issue 3)",
            wall <= 600,
        ),
        headline(
            f"{study_name}: share of the wall time that is not training",
            f"{share:.1%} (median of {repeats}; "
            + ", ".join(f"{name} {value:.1f} s" for name, value in parts.items())
            + ")",
        ),
    ]
    for row in headlines:
        print(row["measure"], row["value"], flush=True)
    write_result(
        NAME,
        {
            "study": "quick" if args.quick else str(args.study),
            "repeats": repeats,
            "cli_startup_s": startup,
            "wall_s": wall,
            "not_training_share": share,
            "parts_s": parts,
            "phases_s": phases,
            "runs": runs,
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
