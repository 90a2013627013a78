"""Which LR range-test suggestion rule makes the best 1cycle ``max_lr``?

For each case and seed: run the range test (with validation, so every rule can
answer), train 1cycle at each rule's suggestion, and brute-force ``max_lr`` over
a log grid. Rules are compared by validation accuracy (mean over seeds); the
test accuracy is reported alongside, never used to choose. A second, cheap part
re-runs only the range test under other smoothing/skip/length settings and
reports how far each rule's suggestion moves and how much it spreads across seeds.

torch-lr-finder runs beside balance as one more "rule": its own range test (the
same sweep: 1e-5 -> 10, 200 steps, divergence at 5x the best loss, but one sweep
where balance averages three; fed by its
documented ``DataLoader(TensorDataset, shuffle=True)``, its default smoothing)
and its steepest-gradient suggestion from ``plot(suggest_lr=True)`` (which skips
the first 10 and last 5 points), trained under the same 1cycle.

The headline is the test-accuracy regret of balance's default rule and of
torch-lr-finder: the best mean test accuracy of the brute-force grid minus the
mean test accuracy at the suggested LR (percentage points; target at most 0.5).
The regret against the grid LR that validation picks is given beside it.

Run (about 12 minutes on 2 cores):
    python benchmarks/suggestion_rules.py
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from _common import headline, machine, parser, write_result
from joblib import Parallel, delayed

from balance.config import RangeTestConfig, TrainConfig
from balance.data import Dataset, load_dataset
from balance.loop import prepare
from balance.optim import build_optimizer
from balance.range_test import SUGGESTION_RULES, RangeTestWarning, find_max_lr
from balance.train import train

NAME = "suggestion_rules"
RULES = tuple(SUGGESTION_RULES)
LR_FINDER = "torch-lr-finder"
DEFAULT_RULE: str = RangeTestConfig.model_fields["rule"].default
REGRET_TARGET = 0.005  # half a percentage point


@dataclass(frozen=True)
class Case:
    name: str
    config: TrainConfig  # seed is replaced per run


CASES = {
    # TrainConfig defaults: MNIST-1D, cnn1d, SGD momentum 0.9, smith 1cycle, batch 100,
    # 25 epochs (900 steps).
    "mnist1d-cnn1d": Case("mnist1d-cnn1d", TrainConfig(threads=1)),
    # 20 epochs of batch 32 (800 steps) converge at good LRs; a 20% validation split
    # (287 examples) keeps the selection less coarse than 144 examples would.
    "digits-mlp": Case(
        "digits-mlp",
        TrainConfig(
            data="digits", model="mlp", batch_size=32, epochs=20, validation_fraction=0.2, threads=1
        ),
    ),
}

SETTINGS: dict[str, dict[str, Any]] = {
    # name -> RangeTestConfig overrides, each compared with the defaults (val_every=10)
    "default": {},
    "repeats=1": {"repeats": 1},
    "ema_beta=0.9": {"ema_beta": 0.9},
    "num_steps=100": {"num_steps": 100, "val_every": 5},
    "start_lr=1e-4": {"start_lr": 1e-4},
    "skip_start=10": {"skip_start": 10},
    # the defaults before this benchmark chose the current ones
    "old default": {"repeats": 1, "ema_beta": 0.9, "num_steps": 100, "val_every": 5},
}


def log_grid(low: float, high: float, points: int) -> list[float]:
    """``points`` LRs spaced evenly in log between ``low`` and ``high``, rounded to 3 digits."""
    ratio = (high / low) ** (1 / (points - 1))
    return [float(f"{low * ratio**i:.3g}") for i in range(points)]


def train_at(config: TrainConfig, data: Dataset, max_lr: float, seed: int) -> dict[str, Any]:
    """One 1cycle run: final validation accuracy and test accuracy (0 when it diverged)."""
    started = time.perf_counter()
    run = config.model_copy(update={"max_lr": max_lr, "seed": seed})
    result = train(run, data=data, evaluate_test=True)
    val = result.final.val_accuracy if result.diverged is None and result.final else 0.0
    test = result.test_accuracy if result.test_accuracy is not None else 0.0
    return {
        "max_lr": max_lr,
        "seed": seed,
        "val_accuracy": val,
        "test_accuracy": test,
        "diverged": result.diverged is not None,
        "seconds": time.perf_counter() - started,
    }


def range_test_at(
    config: TrainConfig, data: Dataset, range_config: RangeTestConfig, seed: int
) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeTestWarning)
        result = find_max_lr(config.model_copy(update={"seed": seed}), range_config, data=data)
    return {
        "seed": seed,
        "suggestions": result.suggestions,
        "verdict": result.diagnostic.verdict,
        "diagnostic": result.diagnostic.explanation,
        "warnings": result.warnings,
        "diverged_at": result.diverged_at,
        "steps": len(result.lrs),
    }


def lr_finder_suggestion(
    config: TrainConfig, data: Dataset, range_config: RangeTestConfig, seed: int
) -> float | None:
    """torch-lr-finder's steepest-gradient LR for the model and optimizer balance would test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.data import DataLoader, TensorDataset
    from torch_lr_finder import LRFinder

    run = config.model_copy(update={"seed": seed})
    _, model, _ = prepare(run, data)
    optimizer = build_optimizer(model, run, range_config.start_lr)
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=run.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    figure, ax = plt.subplots()
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        finder = LRFinder(model, optimizer, torch.nn.CrossEntropyLoss())
        finder.range_test(
            loader,
            start_lr=range_config.start_lr,
            end_lr=range_config.end_lr,
            num_iter=range_config.num_steps,
            step_mode=range_config.mode,
            diverge_th=range_config.diverge_threshold,
        )
        finder.reset()
        try:
            # Returns (ax, lr), or only ax when the curve is too short to suggest.
            shown = finder.plot(suggest_lr=True, ax=ax)
        except Exception:  # its plot raises on curves it cannot draw
            shown = None
    plt.close(figure)
    if isinstance(shown, tuple):
        return float(shown[1])
    return None


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(value) for value in values))


def spread(values: list[float]) -> float:
    """Max/min ratio of positive values (1.0 = identical across seeds)."""
    return max(values) / min(values)


def run_case(
    case: Case,
    seeds: list[int],
    grid: list[float],
    log: Any,
    range_config: RangeTestConfig | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    config = case.config
    data = load_dataset(
        config.data, validation_fraction=config.validation_fraction, split_seed=config.split_seed
    )
    range_config = range_config or RangeTestConfig(val_every=10)
    tests = []
    rule_runs: dict[str, list[dict[str, Any]]] = {rule: [] for rule in (*RULES, LR_FINDER)}
    grid_runs: dict[float, list[dict[str, Any]]] = {lr: [] for lr in grid}
    for seed in seeds:
        test = range_test_at(config, data, range_config, seed)
        test["suggestions"][LR_FINDER] = lr_finder_suggestion(config, data, range_config, seed)
        tests.append(test)
        print(
            f"[{case.name}] seed {seed} suggestions "
            f"{ {k: None if v is None else round(v, 4) for k, v in test['suggestions'].items()} }"
            f" verdict {test['verdict']}",
            file=log,
            flush=True,
        )
    # Every (max_lr, seed) once: rules that agree share a run. Runs are independent and
    # deterministic at one thread each, so they go to `jobs` processes at once.
    wanted = {(lr, seed) for lr in grid for seed in seeds}
    for test in tests:
        wanted |= {(lr, test["seed"]) for lr in test["suggestions"].values() if lr is not None}
    order = sorted(wanted)
    finished = Parallel(n_jobs=jobs, backend="loky")(
        delayed(train_at)(config, data, lr, seed) for lr, seed in order
    )
    done = dict(zip(order, finished, strict=True))
    for test in tests:
        seed = test["seed"]
        for rule in (*RULES, LR_FINDER):
            lr = test["suggestions"][rule]
            if lr is not None:
                rule_runs[rule].append(done[lr, seed])
                print(
                    f"[{case.name}] seed {seed} {rule} lr {lr:.4g} -> val "
                    f"{done[lr, seed]['val_accuracy']:.4f} ({done[lr, seed]['seconds']:.1f}s)",
                    file=log,
                    flush=True,
                )
    for lr in grid:
        for seed in seeds:
            grid_runs[lr].append(done[lr, seed])
            print(
                f"[{case.name}] seed {seed} grid lr {lr:.4g} -> val "
                f"{done[lr, seed]['val_accuracy']:.4f}",
                file=log,
                flush=True,
            )
    grid_summary = [
        {
            "max_lr": lr,
            "val_accuracy": statistics.fmean(run["val_accuracy"] for run in runs),
            "test_accuracy": statistics.fmean(run["test_accuracy"] for run in runs),
        }
        for lr, runs in grid_runs.items()
    ]
    best = max(grid_summary, key=lambda row: row["val_accuracy"])
    best_test = max(grid_summary, key=lambda row: row["test_accuracy"])
    rules: dict[str, dict[str, Any]] = {}
    for rule, runs in rule_runs.items():
        if not runs:
            rules[rule] = {"answered": 0}
            continue
        lrs = [run["max_lr"] for run in runs]
        val = statistics.fmean(run["val_accuracy"] for run in runs)
        test_accuracy = statistics.fmean(run["test_accuracy"] for run in runs)
        rules[rule] = {
            "answered": len(runs),
            "lr_geomean": geometric_mean(lrs),
            "lr_spread": spread(lrs),
            "val_accuracy": val,
            "val_accuracy_min": min(run["val_accuracy"] for run in runs),
            "test_accuracy": test_accuracy,
            "regret": best["val_accuracy"] - val,
            "test_regret": best_test["test_accuracy"] - test_accuracy,
            "test_regret_vs_val_choice": best["test_accuracy"] - test_accuracy,
            "diverged_runs": sum(run["diverged"] for run in runs),
        }
    return {
        "case": case.name,
        "train_config": config.model_dump(mode="json"),
        "range_config": range_config.model_dump(mode="json"),
        "seeds": seeds,
        "range_tests": tests,
        "rule_runs": rule_runs,
        "rules": rules,
        "grid": grid_summary,
        "grid_runs": {str(k): v for k, v in grid_runs.items()},
        "best_grid": best,
        "best_grid_by_test": best_test,
    }


def interpolate_accuracy(grid: list[dict[str, Any]], lr: float) -> float:
    """Mean validation accuracy of the grid, interpolated in log LR (clamped at its ends)."""
    xs = [math.log(row["max_lr"]) for row in grid]
    ys = [row["val_accuracy"] for row in grid]
    return float(np.interp(math.log(lr), xs, ys))


def run_settings(
    case: Case, seeds: list[int], grid: list[dict[str, Any]], log: Any
) -> dict[str, Any]:
    """Range tests only: each setting's suggestions, their spread, and interpolated accuracy."""
    config = case.config
    data = load_dataset(
        config.data, validation_fraction=config.validation_fraction, split_seed=config.split_seed
    )
    out = {}
    for name, overrides in SETTINGS.items():
        range_config = RangeTestConfig.model_validate({"val_every": 10, **overrides})
        tests = [range_test_at(config, data, range_config, seed) for seed in seeds]
        per_rule = {}
        for rule in RULES:
            lrs = [
                test["suggestions"][rule] for test in tests if test["suggestions"][rule] is not None
            ]
            per_rule[rule] = (
                None
                if not lrs
                else {
                    "lr_geomean": geometric_mean(lrs),
                    "lr_spread": spread(lrs),
                    "interpolated_val_accuracy": statistics.fmean(
                        interpolate_accuracy(grid, lr) for lr in lrs
                    ),
                    "answered": len(lrs),
                }
            )
        out[name] = {
            "overrides": overrides,
            "rules": per_rule,
            "verdicts": [test["verdict"] for test in tests],
        }
        print(f"[{case.name}] setting {name} done", file=log, flush=True)
    return out


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for case in results:
        best, best_test = case["best_grid"], case["best_grid_by_test"]
        lines += [
            f"### {case['case']} (seeds {case['seeds']}; brute-force best max_lr by val "
            f"{best['max_lr']:g}: val {best['val_accuracy']:.4f}, test "
            f"{best['test_accuracy']:.4f}; by test {best_test['max_lr']:g}: test "
            f"{best_test['test_accuracy']:.4f})",
            "",
            "| rule | suggested LR (geo-mean, max/min) | 1cycle val acc (worst seed) "
            "| 1cycle test acc | regret (val) | test regret, points (vs val's pick) |",
            "|---|---|---|---|---|---|",
        ]
        for rule, row in case["rules"].items():
            if not row.get("answered"):
                lines.append(f"| {rule} | none | - | - | - | - |")
                continue
            lines.append(
                f"| {rule} | {row['lr_geomean']:.3g} (x{row['lr_spread']:.1f}) | "
                f"{row['val_accuracy']:.4f} ({row['val_accuracy_min']:.4f}) | "
                f"{row['test_accuracy']:.4f} | {row['regret']:+.4f} | "
                f"{_points(row['test_regret'])} ({_points(row['test_regret_vs_val_choice'])}) |"
            )
        lines += ["", "| brute-force max_lr | val acc | test acc |", "|---|---|---|"]
        lines += [
            f"| {row['max_lr']:g} | {row['val_accuracy']:.4f} | {row['test_accuracy']:.4f} |"
            for row in case["grid"]
        ]
        if "settings" in case:
            lines += [
                "",
                "Range-test settings (suggestion geo-mean, max/min across seeds, "
                "val acc interpolated on the grid):",
                "",
                "| setting | " + " | ".join(RULES) + " |",
                "|---|" + "---|" * len(RULES),
            ]
            for name, setting in case["settings"].items():
                cells = []
                for rule in RULES:
                    row = setting["rules"][rule]
                    cells.append(
                        "none"
                        if row is None
                        else f"{row['lr_geomean']:.3g} (x{row['lr_spread']:.1f}) "
                        f"{row['interpolated_val_accuracy']:.3f}"
                    )
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def headlines_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for case in results:
        best_test = case["best_grid_by_test"]
        for rule, who in ((DEFAULT_RULE, f"balance ({DEFAULT_RULE})"), (LR_FINDER, LR_FINDER)):
            row = case["rules"][rule]
            if not row.get("answered"):
                rows.append(headline(f"{case['case']}: {who} test-accuracy regret", "no answer"))
                continue
            rows.append(
                headline(
                    f"{case['case']}: {who} 1cycle test-accuracy regret vs brute-force best "
                    f"(max_lr {best_test['max_lr']:g}, test {best_test['test_accuracy']:.4f})",
                    f"{100 * row['test_regret']:.2f} points (suggested LR "
                    f"{row['lr_geomean']:.3g}, test {row['test_accuracy']:.4f}, mean of "
                    f"{row['answered']} seeds; vs the grid LR validation picks: "
                    f"{100 * row['test_regret_vs_val_choice']:.2f})",
                    "<= 0.5 points" if rule == DEFAULT_RULE else "(reference)",
                    row["test_regret"] <= REGRET_TARGET if rule == DEFAULT_RULE else None,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    arguments.add_argument("--seeds", type=int, default=None, help="seeds per configuration")
    arguments.add_argument("--grid", type=int, default=None, help="brute-force points in 0.02..1")
    arguments.add_argument(
        "--jobs", type=int, default=None, help="training processes at once (all cores)"
    )
    arguments.add_argument(
        "--no-settings", action="store_true", help="skip the range-test settings comparison"
    )
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(1)
    info = machine()
    seeds = list(range(args.seeds or (1 if args.quick else 4)))
    # Both cases peak inside 0.02..1 (digits collapses above ~0.3, MNIST-1D degrades past 1).
    grid = log_grid(0.02, 1.0, args.grid or (3 if args.quick else 9))
    # --quick: two epochs and a 30-step sweep, only to see that everything runs.
    range_config = RangeTestConfig(num_steps=30, val_every=3) if args.quick else None
    # --quick: digits only, in this process (no pool to start).
    jobs = args.jobs or (1 if args.quick else os.cpu_count() or 1)
    names = args.cases or (["digits-mlp"] if args.quick else list(CASES))
    results = []
    for name in names:
        case = CASES[name]
        if args.quick:
            case = Case(name, case.config.model_copy(update={"epochs": 2}))
        case_result = run_case(case, seeds, grid, sys.stderr, range_config, jobs=jobs)
        if not args.no_settings and not args.quick:
            case_result["settings"] = run_settings(case, seeds, case_result["grid"], sys.stderr)
        results.append(case_result)
    table = markdown(results)
    print(table)
    write_result(
        NAME,
        {"results": results, "markdown": table},
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines_of(results),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
