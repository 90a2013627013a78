"""Which LR range-test suggestion rule makes the best 1cycle ``max_lr``?

For each case and seed: run the range test (with validation, so every rule can
answer), train 1cycle at each rule's suggestion, and brute-force ``max_lr`` over
a log grid. Rules are compared by validation accuracy (mean over seeds); the
test accuracy is reported alongside, never used to choose. A second, cheap part
re-runs only the range test under other smoothing/skip/length settings and
reports how far each rule's suggestion moves and how much it spreads across seeds.

Run (about 20 minutes on one shared core):
    python benchmarks/suggestion_rules.py --out benchmarks/results/suggestion_rules.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balance.config import RangeTestConfig, TrainConfig
from balance.data import Dataset, load_dataset
from balance.range_test import SUGGESTION_RULES, RangeTestWarning, find_max_lr
from balance.train import train

RULES = tuple(SUGGESTION_RULES)
DEFAULT_OUT = Path("benchmarks/results/suggestion_rules.json")


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

SETTINGS = {
    # name -> RangeTestConfig overrides, each compared with the defaults (val_every=5)
    "default": {},
    "ema_beta=0.98": {"ema_beta": 0.98},
    "ema_beta=0.8": {"ema_beta": 0.8},
    "skip_start=10": {"skip_start": 10},
    "num_steps=200": {"num_steps": 200, "val_every": 10},
    "num_steps=50": {"num_steps": 50, "val_every": 3},
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


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(value) for value in values))


def spread(values: list[float]) -> float:
    """Max/min ratio of positive values (1.0 = identical across seeds)."""
    return max(values) / min(values)


def run_case(case: Case, seeds: list[int], grid: list[float], log: Any) -> dict[str, Any]:
    config = case.config
    data = load_dataset(
        config.data, validation_fraction=config.validation_fraction, split_seed=config.split_seed
    )
    range_config = RangeTestConfig(val_every=5)
    tests = []
    rule_runs: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES}
    grid_runs: dict[float, list[dict[str, Any]]] = {lr: [] for lr in grid}
    for seed in seeds:
        test = range_test_at(config, data, range_config, seed)
        tests.append(test)
        print(
            f"[{case.name}] seed {seed} suggestions "
            f"{ {k: None if v is None else round(v, 4) for k, v in test['suggestions'].items()} }"
            f" verdict {test['verdict']}",
            file=log,
            flush=True,
        )
        done: dict[float, dict[str, Any]] = {}
        for rule in RULES:
            lr = test["suggestions"][rule]
            if lr is None:
                continue
            if lr not in done:
                done[lr] = train_at(config, data, lr, seed)
            rule_runs[rule].append(done[lr])
            print(
                f"[{case.name}] seed {seed} {rule} lr {lr:.4g} -> val "
                f"{done[lr]['val_accuracy']:.4f} ({done[lr]['seconds']:.1f}s)",
                file=log,
                flush=True,
            )
        for lr in grid:
            grid_runs[lr].append(train_at(config, data, lr, seed))
            print(
                f"[{case.name}] seed {seed} grid lr {lr:.4g} -> val "
                f"{grid_runs[lr][-1]['val_accuracy']:.4f}",
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
    rules = {}
    for rule, runs in rule_runs.items():
        if not runs:
            rules[rule] = {"answered": 0}
            continue
        lrs = [run["max_lr"] for run in runs]
        val = statistics.fmean(run["val_accuracy"] for run in runs)
        rules[rule] = {
            "answered": len(runs),
            "lr_geomean": geometric_mean(lrs),
            "lr_spread": spread(lrs),
            "val_accuracy": val,
            "val_accuracy_min": min(run["val_accuracy"] for run in runs),
            "test_accuracy": statistics.fmean(run["test_accuracy"] for run in runs),
            "regret": best["val_accuracy"] - val,
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
        range_config = RangeTestConfig(**{"val_every": 5, **overrides})
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


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for case in results:
        best = case["best_grid"]
        lines += [
            f"### {case['case']} (seeds {case['seeds']}; brute-force best max_lr "
            f"{best['max_lr']:g}: val {best['val_accuracy']:.4f}, test "
            f"{best['test_accuracy']:.4f})",
            "",
            "| rule | suggested LR (geo-mean, max/min) | 1cycle val acc (worst seed) "
            "| 1cycle test acc | regret (val) |",
            "|---|---|---|---|---|",
        ]
        for rule, row in case["rules"].items():
            if not row.get("answered"):
                lines.append(f"| {rule} | none | - | - | - |")
                continue
            lines.append(
                f"| {rule} | {row['lr_geomean']:.3g} (x{row['lr_spread']:.1f}) | "
                f"{row['val_accuracy']:.4f} ({row['val_accuracy_min']:.4f}) | "
                f"{row['test_accuracy']:.4f} | {row['regret']:+.4f} |"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    parser.add_argument("--grid", type=int, default=7, help="brute-force points in 0.01..3")
    parser.add_argument(
        "--no-settings", action="store_true", help="skip the range-test settings comparison"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    grid = log_grid(0.01, 3.0, args.grid)
    started = time.perf_counter()
    results = []
    for name in args.cases:
        case_result = run_case(CASES[name], seeds, grid, sys.stderr)
        if not args.no_settings:
            case_result["settings"] = run_settings(
                CASES[name], seeds, case_result["grid"], sys.stderr
            )
        results.append(case_result)
    table = markdown(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "results": results,
        "markdown": table,
        "seconds": time.perf_counter() - started,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
    }
    args.out.write_text(json.dumps(payload, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
