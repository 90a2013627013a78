"""Search efficiency: training steps TPE with median pruning needs to come near the grid's best.

The grid is the default study (``studies/mnist1d-cnn.toml``: 4 weight decays x
3 dropouts x 2 batch sizes x 2 seeds, 25 epochs a run). Its best validation
accuracy and ``steps_total`` come from, in this order: ``end_to_end.json`` in the
output folder when ``end_to_end.py`` ran the default study there in the last
three hours (``nox -s bench`` runs it just before; trials are deterministic, so
a second run would give the same figures); else a run here (stage 1 and 2 of
``balance sweep``, no test evaluation or report). ``--rerun-grid`` forces the
run; ``--reference`` uses the completed run committed in
``reports/example/mnist1d-cnn/`` instead, which is only fair where its trials
are reproduced bit for bit. The TPE study is ``studies/mnist1d-cnn-tpe.toml``
(same space as categorical choices, same range test, median pruning), run from
scratch in a temporary folder with its own 2 workers, once per sampler seed;
``same_max_lr_as_grid`` checks that its range tests gave the grid's max LRs.

Steps are optimizer steps actually run: a trial's ``steps`` (the trials frame
column) sums its seeds' runs, and a pruned run counts only the epochs it
trained. Trials are taken in order of completion; "steps to within 0.5 points"
is the sum of the steps of every trial that had started by the time the first
trial within 0.005 of the grid's best validation accuracy completed (trials
still running then are counted whole: an upper bound). The figure is that sum
divided by the grid's steps for every sampler seed; the headline is the worst seed
(a seed that never gets there is "never", and fails), the median beside it.
Target: every seed at most 0.5. A hit whose value equals the grid's best is
reported as a tie: TPE re-found the grid's own best cell (trials are deterministic).

Run (about 7 minutes on 2 cores, 11 when it runs the grid too):
    python benchmarks/search_efficiency.py
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from _common import headline, machine, median, parser, write_result

from balance.analysis import trials_frame
from balance.config import StudyConfig, build
from balance.pipeline import preflight
from balance.record import load_record
from balance.storage import open_storage
from balance.study import create_or_resume, fix_max_lrs, run_workers
from balance.study_file import load_study_file

NAME = "search_efficiency"
ROOT = Path(__file__).resolve().parent.parent
GRID_STUDY = ROOT / "studies" / "mnist1d-cnn.toml"
TPE_STUDY = ROOT / "studies" / "mnist1d-cnn-tpe.toml"
GRID_REFERENCE = ROOT / "reports" / "example" / "mnist1d-cnn" / "summary.json"
WITHIN = 0.005  # half a percentage point of validation accuracy
TARGET = 0.5


def quick_study(sampler: str, name: str) -> StudyConfig:
    """A digits/mlp stand-in for --quick: 2 x 2 cells, 2 epochs, a fixed max LR."""
    values: dict[str, Any] = {
        "name": name,
        "sampler": sampler,
        "seeds": 1,
        "workers": 1,
        "train": {
            "data": "digits",
            "model": "mlp",
            "epochs": 2,
            "batch_size": 64,
            "max_lr": 0.1,
            "threads": 1,
        },
        "search": {"weight_decay": [0.0, 1e-3], "dropout": [0.0, 0.2]},
    }
    if sampler == "tpe":
        values.update(pruner="median", n_trials=3)
    config: StudyConfig = build(StudyConfig, values)
    return config


def run_study(config: StudyConfig, root: Path) -> optuna.Study:
    """Stage 1 and stage 2 of ``balance sweep`` (no test evaluation, no report)."""
    from balance.study import enqueue_missing_cells

    url = str(root / config.name / "study.journal")
    (root / config.name).mkdir(parents=True, exist_ok=True)
    data = preflight(config)
    study = create_or_resume(config, url)
    fix_max_lrs(study, config, data, threads=config.train.threads)
    if config.sampler == "grid":
        enqueue_missing_cells(study, config)
    run_workers(config, url, config.workers)
    return optuna.load_study(study_name=config.name, storage=open_storage(url))


def steps_to_within(study: optuna.Study, config: StudyConfig, goal: float) -> dict[str, Any]:
    """Steps spent until the first trial at or above ``goal`` completed (see the module doc)."""
    frame = trials_frame(load_record(study, config, storage="benchmark")).set_index("number")
    ended = sorted(
        (t.datetime_complete, t)
        for t in study.get_trials(deepcopy=False)
        if t.datetime_complete is not None
    )
    complete = optuna.trial.TrialState.COMPLETE
    hit = next(
        (
            (when, t)
            for when, t in ended
            if t.state == complete and t.value is not None and t.value >= goal
        ),
        None,
    )
    total = int(frame["steps"].sum())
    if hit is None:
        return {"reached": False, "steps": None, "steps_total": total, "trial": None}
    hit_time, hit_trial = hit
    started = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.datetime_start is not None and t.datetime_start <= hit_time
    ]
    return {
        "reached": True,
        "steps": int(sum(frame.loc[t.number, "steps"] for t in started)),
        "trials_started": len(started),
        "steps_total": total,
        "trial": hit_trial.number,
        "value": hit_trial.value,
        "params": hit_trial.params,
    }


def summary_of(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    frame = trials_frame(load_record(study, config, storage="benchmark"))
    complete = frame[frame["state"] == "complete"]
    return {
        "best_val_accuracy": float(complete["val_accuracy"].max()) if len(complete) else None,
        "steps_total": int(frame["steps"].sum()),
        "states": {str(k): int(v) for k, v in frame["state"].value_counts().items()},
        "max_lr": study.user_attrs.get("max_lr", {}),
        "trials": frame[
            ["number", "state", "weight_decay", "dropout", "batch_size", "val_accuracy", "steps"]
        ].to_dict(orient="records"),
    }


def grid_from_end_to_end(out_dir: Path, max_age_s: float = 3 * 3600) -> dict[str, Any] | None:
    """The default study's grid figures from a recent full ``end_to_end.py`` run, if any."""
    path = out_dir / "end_to_end.json"
    try:
        document = json.loads(path.read_text())
        finished = datetime.fromisoformat(document["finished"])
        grid = dict(document["runs"][0]["grid"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    fresh = (datetime.now(UTC) - finished).total_seconds() <= max_age_s
    default = Path(document.get("study", "")).resolve() == GRID_STUDY
    if document.get("quick") or not fresh or not default or grid.get("steps_total") is None:
        return None
    grid["source"] = f"{path.name} (the default study, run by end_to_end.py)"
    return grid


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--seeds", type=int, default=None, help="TPE sampler seeds (3)")
    arguments.add_argument(
        "--rerun-grid", action="store_true", help="run the grid here even if end_to_end ran it"
    )
    arguments.add_argument(
        "--reference",
        action="store_true",
        help="use the committed example run as the grid instead of running it",
    )
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="balance.range_test")
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        from_e2e = None if args.quick or args.rerun_grid else grid_from_end_to_end(args.out_dir)
        if from_e2e is not None and not args.reference:
            grid = from_e2e
        elif args.quick or not args.reference:
            grid_config = quick_study("grid", "grid") if args.quick else load_study_file(GRID_STUDY)
            grid = summary_of(run_study(grid_config, root), grid_config)
            grid["source"] = "run here"
        else:
            reference = json.loads(GRID_REFERENCE.read_text())
            grid = {
                "best_val_accuracy": reference["best"]["val_accuracy"],
                "steps_total": reference["steps_total"],
                "max_lr": reference["max_lr"],
                "states": reference["trials"],
                "source": str(GRID_REFERENCE.relative_to(ROOT)),
            }
        goal = grid["best_val_accuracy"] - WITHIN
        runs = []
        for seed in seeds:
            if args.quick:
                config = quick_study("tpe", f"tpe-{seed}")
            else:
                base = load_study_file(TPE_STUDY)
                config = base.model_copy(update={"sampler_seed": seed, "name": f"tpe-{seed}"})
            study = run_study(config, root)
            run = {"sampler_seed": seed, **summary_of(study, config)}
            run["to_within"] = steps_to_within(study, config, goal)
            run["same_max_lr_as_grid"] = run["max_lr"] == grid["max_lr"]
            runs.append(run)
            print(f"TPE seed {seed}: {run['to_within']}", flush=True)
    ratios = [
        run["to_within"]["steps"] / grid["steps_total"] if run["to_within"]["reached"] else math.inf
        for run in runs
    ]
    total_ratios = [run["steps_total"] / grid["steps_total"] for run in runs]
    ratio = median(ratios)
    worst = max(ratios)
    best = [run["best_val_accuracy"] for run in runs]

    def seed_words(run: dict[str, Any], value: float) -> str:
        if math.isinf(value):
            return "never"
        tie = run["to_within"]["value"] == grid["best_val_accuracy"]
        return f"{value:.2f}" + (" (a tie: the grid's own best cell)" if tie else "")

    shown = ", ".join(seed_words(run, r) for run, r in zip(runs, ratios, strict=True))
    worst_text = "never" if math.isinf(worst) else f"{worst:.2f}"
    headlines = [
        headline(
            "TPE + median pruning: steps to within 0.5 points of the grid's best validation "
            f"accuracy ({grid['best_val_accuracy']:.4f}, {grid['source']}) / grid steps "
            f"({grid['steps_total']:,}), worst sampler seed",
            f"{worst_text} (every seed: {shown}; median {ratio:.2f}; whole TPE study "
            f"{median(total_ratios):.2f} of the grid's steps; TPE best val "
            f"{', '.join(f'{b:.4f}' for b in best)})",
            f"every seed <= {TARGET}",
            worst <= TARGET,
        )
    ]
    print(headlines[0]["measure"], headlines[0]["value"], flush=True)
    write_result(
        NAME,
        {
            "within": WITHIN,
            "target": TARGET,
            "grid": grid,
            "tpe_study": str(TPE_STUDY.relative_to(ROOT)),
            "runs": runs,
            "ratio": ratio,
            "worst_ratio": worst,
            "ratios": ratios,
            "total_ratios": total_ratios,
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
