"""Packed study: trials per hour of the default study, packed against one at a time.

Stage 1 of ``studies/mnist1d-cnn.toml`` (range tests, grid queue) runs once into a
journal file; each variant trains all 30 queued trials from its own copy of that file
(the same cells at the same max LRs), on the same 2 cores, then the stock test
evaluation of its chosen cell:

- ``one at a time``: the study's own setting, 2 workers x 1 thread, ``pack = 1``;
- ``packed, 2 workers x 1 thread``: ``pack = K`` in each worker;
- ``packed, 1 worker x 2 threads``: one worker, ``pack = K``;
- ``one at a time, 1 worker x 2 threads``: the reference for what rounding alone moves
  (two threads sum in another order, as packed kernels do).

K = 4 trials (8 members at 2 seeds): ``packed_trials`` measures 4 to 8 members a pack
as the best at 2 threads. Reported per variant: trials per hour (30 trials over the wall
time of ``run_workers``), the chosen cell, its test accuracy, and the paired difference
of the chosen runs' test correctness against one at a time (seeds x 2,000 examples,
:func:`balance.analysis._comparisons.paired_difference`, 95%): "within noise" when that
interval holds 0; and the verdict's own noise: whether each study's chosen cell lies in
the other's best set (cells the max-t test cannot separate from the best,
:func:`balance.analysis.analyse_noise`). ``ratio``: the best packed variant's trials
per hour over one at a time's. Rounding differences (about 1e-7 a step) grow over 25
epochs of a large LR into different runs, as a change of thread count does; so what
packing can move is the validation means that choose the cell
(``max_value_difference``: the largest gap between a cell's mean validation accuracy
there and one at a time). Two interleaved repeats (a variant takes minutes), the order
rotated; ``ratio`` is the median of the per-repeat ratios.

Run (about 25 minutes on 2 cores):
    python benchmarks/packed_study.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import headline, interleaved, machine, median, parser, write_result
from end_to_end import DEFAULT_STUDY, quick_study

from balance.analysis import analyse_noise
from balance.analysis._comparisons import paired_difference
from balance.config import StudyConfig
from balance.pipeline import preflight, prepare
from balance.record import load_record
from balance.storage import open_existing
from balance.study import evaluate_on_test, run_workers, worker_plan
from balance.study_file import load_study_file

NAME = "packed_study"
PACK = 4
BASELINE = "one at a time"
REFERENCE = "one at a time, 1 worker x 2 threads"  # what rounding alone moves
VARIANTS = {  # name -> (workers, pack)
    BASELINE: (2, 1),
    REFERENCE: (1, 1),
    "packed, 2 workers x 1 thread": (2, PACK),
    "packed, 1 worker x 2 threads": (1, PACK),
}


def run_variant(
    config: StudyConfig, stage_one: Path, folder: Path, workers: int, pack: int, data: Any
) -> dict[str, Any]:
    """Train the queued trials of a copy of ``stage_one``; time it, evaluate the chosen cell."""
    url = str(folder / f"{workers}x{pack}.journal")
    shutil.copy(stage_one, url)
    started = time.perf_counter()
    run_workers(config, url, workers, pack=pack)
    seconds = time.perf_counter() - started
    study, _ = open_existing(config.name, url)
    threads = worker_plan(config, workers)[0][0]
    evaluate_on_test(study, config, data, threads=threads, workers=workers)
    record = load_record(study, config, storage=url)
    final = record.final
    noise = analyse_noise(record)
    assert final is not None and noise is not None
    trials = sum(1 for trial in record.trials if trial.state == "complete")
    return {
        "workers": workers,
        "pack": pack,
        "threads_per_worker": threads,
        "seconds": seconds,
        "trials": trials,
        "trials_per_hour": trials / seconds * 3600,
        "chosen": final.params,
        "test_accuracy": final.chosen.test_accuracy,
        "correct": np.vstack([run.correct() for run in final.chosen.runs]),
        "values": {
            trial.cell: trial.value
            for trial in record.trials
            if trial.state == "complete" and trial.cell is not None
        },
        "best_set": sorted(cell.key for cell in noise.cells if cell.indistinguishable),
        "chosen_key": noise.best.key,
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 2 (quick: 1)")
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = args.repeats or (1 if args.quick else 2)
    if args.quick:
        config = quick_study("packed-quick").model_copy(update={"seeds": 2})
    else:
        config = load_study_file(DEFAULT_STUDY)
    data = preflight(config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stage_one = folder / "stage-one.journal"
        prepare(config, str(stage_one), data)

        def variant(name: str) -> Callable[[], dict[str, Any]]:
            workers, pack = VARIANTS[name]
            workers = 1 if args.quick else workers  # quick: no worker processes to spawn

            def run() -> dict[str, Any]:
                result = run_variant(config, stage_one, folder, workers, pack, data)
                print(name, f"{result['trials_per_hour']:.0f} trials/h", flush=True)
                return result

            return run

        runs = interleaved({name: variant(name) for name in VARIANTS}, repeats)
    # Training is deterministic for a given worker layout: every repeat chose the same
    # cell with the same numbers; only the clock differs from repeat to repeat.
    results: dict[str, Any] = {}
    for name, done in runs.items():
        rates = [run["trials_per_hour"] for run in done]
        results[name] = {**done[-1], "trials_per_hour": median(rates), "repeats": rates}
    for result in results.values():
        ratios = [
            mine / theirs
            for mine, theirs in zip(result["repeats"], results[BASELINE]["repeats"], strict=True)
        ]
        result["ratio_repeats"] = ratios
    base = results[BASELINE]
    base_correct = base.pop("correct")
    rng = np.random.default_rng(0)
    headlines = []
    for name, result in results.items():
        if name == BASELINE:
            continue
        difference = paired_difference(result.pop("correct"), base_correct, rng)
        result["ratio"] = median(result["ratio_repeats"])
        result["same_cell"] = result["chosen"] == base["chosen"]
        # the verdict's noise: each study's choice among the other's indistinguishable best
        result["chosen_in_baseline_best_set"] = result["chosen_key"] in base["best_set"]
        result["baseline_chosen_in_best_set"] = base["chosen_key"] in result["best_set"]
        result["test_difference"] = difference._asdict()
        result["within_noise"] = not difference.beyond_noise
        result["max_value_difference"] = max(
            abs(value - base["values"][cell]) for cell, value in result["values"].items()
        )
    packed = {name: r for name, r in results.items() if name.startswith("packed")}
    best = max(packed, key=lambda name: packed[name]["ratio"])
    for name, result in {**packed, REFERENCE: results[REFERENCE]}.items():
        d = result["test_difference"]
        agree = result["chosen_in_baseline_best_set"] and result["baseline_chosen_in_best_set"]
        headlines.append(
            headline(
                f"{DEFAULT_STUDY.name if not args.quick else 'quick'}: trials/hour, {name} "
                f"(pack {result['pack']}) / one at a time (2 workers x 1 thread)",
                f"{result['ratio']:.2f} ({result['trials_per_hour']:.0f} vs "
                f"{base['trials_per_hour']:.0f}); chosen cell "
                f"{'the same' if result['same_cell'] else result['chosen_key']} "
                f"({'each in the other' if agree else 'not each in the other'}'s best set, "
                f"{len(result['best_set'])} vs {len(base['best_set'])} cells); test accuracy "
                f"{result['test_accuracy']:.4f} vs {base['test_accuracy']:.4f}, paired difference "
                f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]; cell means "
                f"differ by at most {result['max_value_difference']:.1e}",
                ">= 1.5, choices in each other's best set, test within noise"
                if name == best
                else "",
                (result["ratio"] >= 1.5 and agree and result["within_noise"])
                if name == best
                else None,
            )
        )
        print(headlines[-1]["measure"], headlines[-1]["value"], flush=True)
    write_result(
        NAME,
        {
            "ratio": packed[best]["ratio"],
            "ratio_variant": best,
            "pack": PACK,
            "repeats": repeats,
            "variants": results,
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
