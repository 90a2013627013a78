"""Super-convergence reproduced: 1cycle at the range-test LR against the MNIST-1D paper's recipe.

Baseline (the MNIST-1D paper's CNN recipe): Adam at a constant LR of 1e-2, batch
100, about 6,000 steps (whole epochs: 167 on MNIST-1D = 6,012 steps, 462 on
digits = 6,006), no weight decay. Its targets are its own final accuracies, the
mean of 3 seeds: on validation (which chooses) and on test (which only measures).

1cycle: for each seed, ``balance lr-find`` (the CLI with its default range test:
1e-5 -> 10 in 200 steps, 3 seeds' sweeps averaged) at batch 100; then 1cycle
(smith, SGD, the package defaults) trains for each budget of a ladder of epochs
at two LRs read off that range test:

- ``lr-find``: the ``max_lr`` it prints (the default: the curve's ``onset`` rule,
  then 5 complete 1cycle probes around it at lr-find's default budget, 25 epochs;
  ``--quick`` runs one one-epoch probe);
- ``loss-minimum``: the LR where its smoothed loss is lowest, just before it
  climbs (Smith's upper bound; fastai's "minimum" rule is a tenth of it).

Where the case names a search (digits), a third variant runs the whole method:

- ``balanced``: for each budget, ``balance sweep`` on a grid of weight decay x
  dropout (3 seeds a cell, max LR fixed by the seed-0 range test, as a study
  fixes it once), choosing on validation; the chosen setting's test accuracy
  (3 seeds) is the figure. Budgets run in order, up to 5x fewer steps than the
  baseline, until one reaches the validation target; the sweep's own steps are
  recorded as its cost.

Selection uses validation only, as a user without the test split would choose:

- chosen budget: the smallest budget whose final validation accuracy, mean of the
  3 seeds, reaches the baseline's final validation accuracy. Budgets up to 1,000
  steps always run; longer ones only while a variant has no chosen budget.
- at that budget, test accuracy is read once and compared with the baseline's:
  above, a tie (equal to the last digit: on a few hundred test examples a tie is
  common and is no win), or below. The target is met only above it.
- speed-up, two definitions in one row: the baseline's whole run (its steps over
  the chosen budget; the headline, target at least 5x), and the baseline's first
  step at which its mean validation curve reaches its final validation accuracy
  (it may get there long before step 6,000).

Issue 2's check rides along: on MNIST-1D, the largest budget of at most 1,000
steps (27 epochs = 972 steps) at the ``balance lr-find`` LR reaches at least 94%
test accuracy, mean of 3 seeds.

Runs are independent and deterministic at one thread each, so they go to one
process per core (accuracy is measured here, not speed).

Run (about 22 minutes on 2 cores):
    python benchmarks/super_convergence.py
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from _common import headline, machine, parser, write_result
from joblib import Parallel, delayed

from balance.config import StudyConfig, TrainConfig, build
from balance.data import load_dataset
from balance.pipeline import sweep
from balance.train import train

NAME = "super_convergence"
BASELINE_STEPS = 6000
SPEEDUP_TARGET = 5.0
ISSUE2_TARGET = 0.94  # issue 2: 1cycle within 1,000 steps at batch 100 on MNIST-1D
ISSUE2_STEPS = 1000
VARIANTS: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    # balance's answer: the LR `balance lr-find` prints as max_lr (the default rule).
    "lr-find": ("the lr-find LR", lambda test: float(test["max_lr"])),
    # Smith's upper bound read off the same curve: the LR where the smoothed loss is
    # lowest, just before it climbs (fastai's "minimum" rule is a tenth of it).
    "loss-minimum": (
        "the range test's loss-minimum LR",
        lambda test: float(test["suggestions"]["minimum"]) / test["minimum_fraction"],
    ),
}


@dataclass(frozen=True)
class Case:
    name: str
    one_cycle: TrainConfig  # 1cycle settings (max_lr, seed and epochs set per run)
    ladder: tuple[int, ...]  # 1cycle budgets, in epochs
    balance_search: dict[str, list[float]] | None = None  # the "balanced" variant's grid


CASES = {
    "mnist1d-cnn1d": Case(
        "mnist1d-cnn1d",
        TrainConfig(threads=1),
        # 108 ... 972 steps of batch 100; then 1,188 (5x fewer than 6,012) and 1,800
        (3, 6, 9, 12, 18, 27, 33, 50),
    ),
    "digits-mlp": Case(
        "digits-mlp",
        TrainConfig(data="digits", model="mlp", threads=1),
        # 52 ... 988 steps of batch 100; then 1,196 (5x fewer than 6,006) and 2,002
        (4, 8, 12, 23, 38, 76, 92, 154),
        # the package defaults (5e-4, 0) miss the target here; MNIST-1D needs no search
        {"weight_decay": [0.0, 5e-4, 1e-3, 3e-3], "dropout": [0.0, 0.1, 0.2, 0.3]},
    ),
}


def baseline_of(config: TrainConfig, epochs: int) -> TrainConfig:
    return config.model_copy(
        update={
            "optimizer": "adam",
            "policy": "constant",
            "max_lr": 1e-2,
            "weight_decay": 0.0,
            "dropout": 0.0,
            "epochs": epochs,
        }
    )


def lr_find(config: TrainConfig, seed: int, num_steps: int | None) -> dict[str, Any]:
    """Run ``balance lr-find`` (the CLI, in a subprocess) and read the LR it chose."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            *(sys.executable, "-m", "balance.cli", "lr-find"),
            *("--data", config.data, "--model", config.model),
            *("--batch-size", str(config.batch_size), "--seed", str(seed)),
            *("--threads", "1", "--out", folder),
        ]
        if num_steps is not None:  # --quick: a short sweep and one short probe
            quick = ["--num-steps", str(num_steps), "--probes", "1", "--probe-refine", "0"]
            command[-2:-2] = [*quick, "--epochs", "1"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"balance lr-find failed: {done.stderr[-2000:]}")
        found = json.loads((Path(folder) / "range_test.json").read_text())
    return {
        "seed": seed,
        "max_lr": found["max_lr"],
        "rule": found["rule"],
        "suggestions": found["suggestions"],
        "minimum_fraction": found["range_config"]["minimum_fraction"],
        "verdict": found["diagnostic"]["verdict"],
        "command": " ".join(command[2:-2]),
    }


def run(config: TrainConfig) -> dict[str, Any]:
    """One training run with test accuracy after every epoch."""
    data = load_dataset(config.data, validation_fraction=config.validation_fraction)
    result = train(config, data=data, track_test=True)
    return {
        "seed": config.seed,
        "max_lr": config.max_lr,
        "epochs": config.epochs,
        "steps": result.steps,
        "diverged": result.diverged is not None,
        "test_accuracy": result.test_accuracy if result.test_accuracy is not None else 0.0,
        "val_accuracy": result.final.val_accuracy if result.final is not None else 0.0,
        "curve_steps": [m.step for m in result.epochs],
        "curve_test": [m.test_accuracy for m in result.epochs],
        "curve_val": [m.val_accuracy for m in result.epochs],
    }


def mean_curve(
    runs: list[dict[str, Any]], key: str = "curve_test"
) -> tuple[list[int], list[float]]:
    """Steps and mean accuracy over seeds (runs of one budget share their steps)."""
    length = min(len(r["curve_steps"]) for r in runs)
    steps = runs[0]["curve_steps"][:length]
    values = [statistics.fmean(r[key][i] for r in runs) for i in range(length)]
    return steps, values


def versus(value: float, target: float) -> str:
    """``above``, ``tie`` or ``below`` the target (a tie to the last digit is no win)."""
    return "above" if value > target else ("tie" if value == target else "below")


def first_reach(steps: list[int], values: list[float], target: float) -> int | None:
    return next((step for step, value in zip(steps, values, strict=True) if value >= target), None)


def _budget_rows(
    runs_by_budget: dict[int, list[dict[str, Any]]], spe: int, val_target: float
) -> list[dict[str, Any]]:
    rows = []
    for epochs, runs in sorted(runs_by_budget.items()):
        val = statistics.fmean(r["val_accuracy"] for r in runs)
        rows.append(
            {
                "epochs": epochs,
                "steps": epochs * spe,
                "val_accuracy": val,
                "test_accuracy": statistics.fmean(r["test_accuracy"] for r in runs),
                "test_accuracy_per_seed": [r["test_accuracy"] for r in runs],
                "reaches_val_target": val >= val_target,
            }
        )
    return rows


def balanced_budget(
    case: Case,
    search: dict[str, list[float]],
    max_lr: float,
    seeds: list[int],
    epochs: int,
    jobs: int,
    root: Path,
) -> dict[str, Any]:
    """``balance sweep`` at one budget; the test accuracy of the setting it chose on validation."""
    config = build(
        StudyConfig,
        {
            "name": f"{case.name}-{epochs}-epochs",
            "seeds": len(seeds),
            "workers": jobs,
            "search": search,
            "train": case.one_cycle.model_copy(
                update={"epochs": epochs, "seed": seeds[0], "max_lr": max_lr}
            ).model_dump(),
        },
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
    summary = sweep(config, root=root).summary
    chosen = summary["test"]["chosen"]
    return {
        "epochs": epochs,
        "params": summary["best"]["params"],
        "val_accuracy": summary["best"]["val_accuracy"],
        "test_accuracy": chosen["test_accuracy"],
        "test_accuracy_per_seed": [run["test_accuracy"] for run in chosen["runs"]],
        "sweep_trials": config.search.n_cells,
        "sweep_steps": summary["steps_total"],
        "runs": chosen["runs"],
    }


def run_balanced(
    case: Case,
    found: list[dict[str, Any]],
    seeds: list[int],
    val_target: float,
    *,
    budgets_in_steps: dict[int, int],
    jobs: int,
    quick: bool,
) -> dict[str, Any]:
    """The ``balanced`` variant: budgets (epochs: steps) in order until the chosen setting's
    validation accuracy reaches ``val_target``."""
    assert case.balance_search is not None
    search = case.balance_search
    if quick:
        search = {name: axis[:2] for name, axis in search.items()}
    max_lr = float(found[0]["max_lr"])
    budgets = []
    with tempfile.TemporaryDirectory() as folder:
        for epochs, steps in budgets_in_steps.items():
            row = balanced_budget(case, search, max_lr, seeds, epochs, jobs, Path(folder))
            row["steps"] = steps
            row["reaches_val_target"] = row["val_accuracy"] >= val_target
            budgets.append(row)
            if row["reaches_val_target"]:
                break
    return {
        "max_lr": [max_lr] * len(seeds),
        "how": "the lr-find LR, weight decay and dropout chosen by `balance sweep`",
        "budgets": [{k: v for k, v in row.items() if k != "runs"} for row in budgets],
        "runs": {str(row["epochs"]): row["runs"] for row in budgets},
    }


def run_case(case: Case, seeds: list[int], baseline_epochs: int, jobs: int, quick: bool) -> Any:
    spe = math.ceil(len(load_dataset(case.one_cycle.data).x_train) / case.one_cycle.batch_size)
    ladder = case.ladder[:1] if quick else case.ladder
    short = [epochs for epochs in ladder if epochs * spe <= ISSUE2_STEPS] or ladder[:1]
    found = [lr_find(case.one_cycle, seed, 30 if quick else None) for seed in seeds]
    pool = Parallel(n_jobs=jobs, backend="loky")

    def one_cycle(variant: str, epochs: int) -> list[TrainConfig]:
        return [
            case.one_cycle.model_copy(
                update={
                    "max_lr": VARIANTS[variant][1](test),
                    "seed": test["seed"],
                    "epochs": epochs,
                }
            )
            for test in found
        ]

    # Everything up to 1,000 steps at once; longer budgets only while a variant falls short.
    jobs_list = [
        baseline_of(case.one_cycle, baseline_epochs).model_copy(update={"seed": s}) for s in seeds
    ]
    keys = [("baseline", 0)] * len(seeds)
    for variant in VARIANTS:
        for epochs in short:
            jobs_list += one_cycle(variant, epochs)
            keys += [(variant, epochs)] * len(seeds)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for key, result in zip(keys, pool(delayed(run)(c) for c in jobs_list), strict=True):
        runs.setdefault(key, []).append(result)
    baseline_runs = runs.pop(("baseline", 0))
    target = statistics.fmean(r["test_accuracy"] for r in baseline_runs)
    val_target = statistics.fmean(r["val_accuracy"] for r in baseline_runs)

    def reached(variant: str) -> bool:  # on validation: the test split chooses nothing
        return any(
            statistics.fmean(r["val_accuracy"] for r in found_runs) >= val_target
            for (name, _), found_runs in runs.items()
            if name == variant
        )

    for epochs in (e for e in ladder if e not in short):
        pending = [variant for variant in VARIANTS if not reached(variant)]
        if not pending:
            break
        configs = [config for variant in pending for config in one_cycle(variant, epochs)]
        results = pool(delayed(run)(c) for c in configs)
        for index, variant in enumerate(pending):
            runs[variant, epochs] = results[index * len(seeds) : (index + 1) * len(seeds)]

    base_steps, base_curve = mean_curve(baseline_runs)
    _, base_val_curve = mean_curve(baseline_runs, "curve_val")
    baseline_total = baseline_epochs * spe
    base_first = first_reach(base_steps, base_val_curve, val_target)

    def scored(variant: dict[str, Any]) -> dict[str, Any]:
        """The variant with its chosen budget, its test result there and both speed-ups."""
        hit = next((row for row in variant["budgets"] if row["reaches_val_target"]), None)
        steps = hit["steps"] if hit else None
        return {
            **variant,
            "chosen_budget_steps": steps,
            "test_at_chosen": None if hit is None else hit["test_accuracy"],
            "test_versus_baseline": None if hit is None else versus(hit["test_accuracy"], target),
            "speedup": baseline_total / steps if steps else None,
            "speedup_vs_baseline_first_reach": (base_first or baseline_total) / steps
            if steps
            else None,
        }

    variants = {}
    for variant, (words, _) in VARIANTS.items():
        by_budget = {epochs: r for (name, epochs), r in runs.items() if name == variant}
        variants[variant] = scored(
            {
                "max_lr": [VARIANTS[variant][1](test) for test in found],
                "how": words,
                "budgets": _budget_rows(by_budget, spe, val_target),
                "runs": {str(epochs): r for epochs, r in sorted(by_budget.items())},
            }
        )
    if case.balance_search is not None:
        within = {e: e * spe for e in ladder if e * spe <= baseline_total / SPEEDUP_TARGET}
        if quick:  # the quick baseline is too short for any budget to be 5x shorter
            within = {ladder[0]: ladder[0] * spe}
        balanced = run_balanced(
            case, found, seeds, val_target, budgets_in_steps=within, jobs=jobs, quick=quick
        )
        variants["balanced"] = scored(balanced)
    return {
        "case": case.name,
        "steps_per_epoch": spe,
        "seeds": seeds,
        "range_tests": found,
        "baseline": {
            "config": baseline_of(case.one_cycle, baseline_epochs).model_dump(mode="json"),
            "steps": baseline_total,
            "target_test_accuracy": target,
            "target_val_accuracy": val_target,
            "test_accuracy_per_seed": [r["test_accuracy"] for r in baseline_runs],
            "first_reach_step": base_first,  # of its mean validation curve
            "mean_curve": {"steps": base_steps, "test_accuracy": base_curve},
            "runs": baseline_runs,
        },
        "one_cycle_config": case.one_cycle.model_dump(mode="json"),
        "variants": variants,
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    arguments.add_argument("--jobs", type=int, default=None, help="processes (all cores)")
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    seeds = [0] if args.quick else [0, 1, 2]
    names = args.cases or (["digits-mlp"] if args.quick else list(CASES))
    results = {}
    headlines = []
    for name in names:
        case = CASES[name]
        spe = math.ceil(len(load_dataset(case.one_cycle.data).x_train) / case.one_cycle.batch_size)
        baseline_epochs = 2 if args.quick else math.ceil(BASELINE_STEPS / spe)
        jobs = args.jobs or (1 if args.quick else os.cpu_count() or 1)
        results[name] = out = run_case(case, seeds, baseline_epochs, jobs, args.quick)
        base = out["baseline"]
        rows = []
        for result in out["variants"].values():
            lrs = ", ".join(f"{lr:.3g}" for lr in result["max_lr"])
            all_runs = [r for runs in result["runs"].values() for r in runs]
            diverged = sum(r["diverged"] for r in all_runs)
            lrs += f"; {diverged} of {len(all_runs)} runs diverged" if diverged else ""
            if result["speedup"] is None:
                best = max(result["budgets"], key=lambda row: row["val_accuracy"])
                value = (
                    f"no budget reached the baseline's validation accuracy "
                    f"{base['target_val_accuracy']:.4f}: best {best['val_accuracy']:.4f} at "
                    f"{best['steps']} steps, largest budget {result['budgets'][-1]['steps']} "
                    f"steps (max_lr {lrs})"
                )
            else:
                chosen = next(row for row in result["budgets"] if row["reaches_val_target"])
                if "params" in chosen:  # the balanced variant: say what it chose and its cost
                    cost = sum(row["sweep_steps"] for row in result["budgets"])
                    lrs += (
                        f"; chosen on validation: weight decay "
                        f"{chosen['params']['weight_decay']:g}, dropout "
                        f"{chosen['params']['dropout']:g}; the sweeps took {cost} steps"
                    )
                value = (
                    f"{result['speedup']:.1f}x against the baseline's whole run "
                    f"({result['chosen_budget_steps']} steps vs {base['steps']}), "
                    f"{result['speedup_vs_baseline_first_reach']:.1f}x against its first step "
                    f"at that validation accuracy ({base['first_reach_step']}); "
                    f"test there {result['test_at_chosen']:.4f} vs the baseline's "
                    f"{base['target_test_accuracy']:.4f}: {result['test_versus_baseline']} "
                    f"(mean of {len(seeds)} seeds; max_lr {lrs})"
                )
            met = (
                result["speedup"] is not None
                and result["speedup"] >= SPEEDUP_TARGET
                and result["test_versus_baseline"] == "above"
            )
            rows.append(
                headline(
                    f"{name}: 1cycle at {result['how']}, budget chosen on validation (the "
                    "smallest reaching the final validation accuracy of Adam 1e-2 constant, "
                    "batch 100, ~6,000 steps); speed-up, and test accuracy there",
                    value,
                    f">= {SPEEDUP_TARGET:g}x and above the baseline on test",
                    met,
                )
            )
        if name == "mnist1d-cnn1d":
            short = [
                row for row in out["variants"]["lr-find"]["budgets"] if row["steps"] <= ISSUE2_STEPS
            ]
            top = short[-1]
            per_seed = ", ".join(f"{v:.3f}" for v in top["test_accuracy_per_seed"])
            rows.append(
                headline(
                    f"issue 2: mnist1d-cnn1d, balance lr-find then 1cycle of {top['steps']} "
                    "steps at batch 100, test accuracy",
                    f"{top['test_accuracy']:.4f} (mean of {len(seeds)} seeds: {per_seed})",
                    f">= {ISSUE2_TARGET}",
                    top["test_accuracy"] >= ISSUE2_TARGET,
                )
            )
        for row in rows:
            print(row["measure"], row["value"], flush=True)
        headlines += rows
    write_result(
        NAME,
        {"cases": results},
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
