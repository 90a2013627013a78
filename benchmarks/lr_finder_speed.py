"""LR range test wall time: balance against torch-lr-finder, at equal steps and at each default.

Both sweep the same model and optimizer (fresh copies each run, built outside the
timer) from ``start_lr`` to ``end_lr`` exponentially over ``num_steps`` steps at
the same batch size, and restore the model and optimizer afterwards. The timer
covers the sweep and the restore: ``balance.range_test.range_test`` (which also
computes its suggestions) against ``LRFinder(...)``, ``range_test`` and
``reset``. The divergence stop is switched off on both sides (threshold 1e9) and
``end_lr`` kept below where the loss blows up, so both really run ``num_steps``
steps (checked). torch-lr-finder is fed in two ways:

- ``dataloader``: its documented use, ``DataLoader(TensorDataset(x, y),
  batch_size, shuffle=True)`` (collates a batch from single examples);
- ``slices``: the same DataLoader given a ``BatchSampler``, so each batch is one
  index into the tensors (the fastest way to feed it in-memory data).

The figure is torch-lr-finder's time divided by balance's (>= 1: balance is no
slower), the median of interleaved repeats.

Defaults, side by side: what a user pays who takes each tool as it comes.
balance's ``find_max_lr`` with ``RangeTestConfig()`` (3 sweeps of 200 steps from
fresh models, averaged; building those models is inside the timer, as it is part
of that default) against torch-lr-finder's ``range_test(loader)`` defaults (one
sweep of 100 steps to LR 10, divergence stop at 5x, its documented DataLoader),
from the optimizer's LR 1e-5. Either may stop early at divergence; the steps each
ran are recorded. This ratio has no target: it is the price of averaging.

Console output (tqdm, prints) is sent to /dev/null on both sides. The suggestion
quality (1cycle accuracy at each tool's suggested LR against brute force) is in
``lr_suite.py``.

Run (about 2 minutes):
    python benchmarks/lr_finder_speed.py
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _common import headline, interleaved, machine, median, parser, spread, write_result
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from balance.config import RangeTestConfig, TrainConfig
from balance.data import Dataset, load_dataset
from balance.loop import prepare
from balance.optim import build_optimizer
from balance.range_test import RangeTestWarning, find_max_lr, range_test

NAME = "lr_finder_speed"
NO_STOP = 1e9

CASES = {
    # MNIST-1D, cnn1d, batch 100, SGD momentum 0.9 (the default study's range test
    # runs 1e-4 -> 10; 1.0 keeps the loss finite for all 100 steps).
    "mnist1d-cnn1d": TrainConfig(threads=1),
    # digits, mlp, batch 32: small steps, where feeding the batches costs most.
    "digits-mlp": TrainConfig(data="digits", model="mlp", batch_size=32, threads=1),
}


def fresh(config: TrainConfig, data: Dataset, start_lr: float) -> tuple[nn.Module, Any]:
    """The model and optimizer ``find_max_lr`` would build, seeded the same each time."""
    _, model, _ = prepare(config, data)
    return model, build_optimizer(model, config, start_lr)


def time_balance(config: TrainConfig, data: Dataset, sweep: RangeTestConfig) -> dict[str, Any]:
    model, optimizer = fresh(config, data, sweep.start_lr)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeTestWarning)  # "loss still falling": expected here
        result = range_test(
            model, optimizer, data, batch_size=config.batch_size, config=sweep, generator=generator
        )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "steps": len(result.lrs),
        "steepest": result.suggestions["steepest"],
    }


def time_balance_default(config: TrainConfig, data: Dataset, steps: int) -> dict[str, Any]:
    """``find_max_lr`` with its defaults (``steps`` per sweep only in --quick)."""
    defaults = RangeTestConfig(num_steps=steps)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeTestWarning)
        result = find_max_lr(config, defaults, data=data)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": len(result.lrs) * result.repeats, "sweeps": result.repeats}


def time_lr_finder_default(config: TrainConfig, data: Dataset, steps: int) -> dict[str, Any]:
    """torch-lr-finder's ``range_test`` with its defaults (``steps`` only in --quick)."""
    # end_lr 10, exp steps, diverge_th 5 and the optimizer's LR as start: its defaults
    run = lr_finder_run(config, data, RangeTestConfig().start_lr, "dataloader", num_iter=steps)
    return {**run, "sweeps": 1}


def defaults_case(config: TrainConfig, data: Dataset, repeats: int, quick: bool) -> dict[str, Any]:
    """Each tool at its defaults, interleaved: seconds, steps run, and balance / theirs."""
    ours_steps, their_steps = (20, 10) if quick else (RangeTestConfig().num_steps, 100)
    variants: dict[str, Callable[[], dict[str, Any]]] = {
        "balance_default": lambda: time_balance_default(config, data, ours_steps),
        "lr_finder_default": lambda: time_lr_finder_default(config, data, their_steps),
    }
    runs = interleaved(variants, repeats)
    ratios = [
        ours["seconds"] / theirs["seconds"]
        for ours, theirs in zip(runs["balance_default"], runs["lr_finder_default"], strict=True)
    ]
    return {
        "runs": runs,
        "balance_over_lr_finder": median(ratios),
        "balance_over_lr_finder_range": spread(ratios),
        "seconds": {name: median([r["seconds"] for r in rs]) for name, rs in runs.items()},
        "steps": {name: median([r["steps"] for r in rs]) for name, rs in runs.items()},
    }


def lr_finder_loader(data: Dataset, batch_size: int, feed: str) -> DataLoader:
    dataset = TensorDataset(data.x_train, data.y_train)
    if feed == "dataloader":
        return DataLoader(dataset, batch_size=batch_size, shuffle=True)
    # TensorDataset indexed by a list of indices returns whole batch tensors.
    sampler = BatchSampler(RandomSampler(dataset), batch_size, drop_last=True)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def lr_finder_run(
    config: TrainConfig, data: Dataset, optimizer_lr: float, feed: str, **range_test: Any
) -> dict[str, Any]:
    """Time ``LRFinder(...).range_test(loader, **range_test)`` and ``reset`` on a fresh model
    whose optimizer starts at ``optimizer_lr``, its console output sent to /dev/null."""
    from torch_lr_finder import LRFinder

    model, optimizer = fresh(config, data, optimizer_lr)
    loader = lr_finder_loader(data, config.batch_size, feed)
    with (
        open(os.devnull, "w") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        started = time.perf_counter()
        finder = LRFinder(model, optimizer, nn.CrossEntropyLoss())
        finder.range_test(loader, **range_test)
        finder.reset()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": len(finder.history["lr"])}


def time_lr_finder(
    config: TrainConfig, data: Dataset, sweep: RangeTestConfig, feed: str
) -> dict[str, Any]:
    """torch-lr-finder at the same sweep as balance's, its divergence stop off."""
    return lr_finder_run(
        config,
        data,
        sweep.start_lr,
        feed,
        start_lr=sweep.start_lr,
        end_lr=sweep.end_lr,
        num_iter=sweep.num_steps,
        step_mode="exp",
        diverge_th=NO_STOP,
    )


def run_case(
    config: TrainConfig, data: Dataset, sweep: RangeTestConfig, repeats: int
) -> dict[str, Any]:
    torch.set_num_threads(config.threads or torch.get_num_threads())
    variants: dict[str, Callable[[], dict[str, Any]]] = {
        "balance": lambda: time_balance(config, data, sweep),
        "lr_finder_dataloader": lambda: time_lr_finder(config, data, sweep, "dataloader"),
        "lr_finder_slices": lambda: time_lr_finder(config, data, sweep, "slices"),
    }
    for variant in variants.values():  # warm-up
        variant()
    runs = interleaved(variants, repeats)
    for name, results in runs.items():
        steps = {run["steps"] for run in results}
        if steps != {sweep.num_steps}:
            raise RuntimeError(f"{name} ran {steps} steps, not {sweep.num_steps}")
    out: dict[str, Any] = {"config": config.model_dump(mode="json"), "runs": runs}
    for feed in ("dataloader", "slices"):
        ratios = [
            other["seconds"] / ours["seconds"]
            for ours, other in zip(runs["balance"], runs[f"lr_finder_{feed}"], strict=True)
        ]
        out[f"speedup_vs_{feed}"] = median(ratios)
        out[f"speedup_vs_{feed}_range"] = spread(ratios)
        out[f"speedup_vs_{feed}_repeats"] = ratios
    out["seconds"] = {
        name: median([r["seconds"] for r in results]) for name, results in runs.items()
    }
    return out


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 7 (quick: 3)")
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = args.repeats or (3 if args.quick else 7)
    sweep = RangeTestConfig(
        start_lr=1e-4,
        end_lr=1.0,
        num_steps=20 if args.quick else 100,
        diverge_threshold=NO_STOP,
        val_every=0,
    )
    results = {}
    headlines = []
    names = ["digits-mlp"] if args.quick else list(CASES)
    for name in names:
        config = CASES[name]
        data = load_dataset(config.data, validation_fraction=config.validation_fraction)
        results[name] = case = run_case(config, data, sweep, repeats)
        case["defaults"] = defaults = defaults_case(config, data, repeats, args.quick)
        low, high = defaults["balance_over_lr_finder_range"]
        seconds, steps = defaults["seconds"], defaults["steps"]
        headlines.append(
            headline(
                f"{name}, each at its defaults: balance lr-find time / torch-lr-finder time",
                f"{defaults['balance_over_lr_finder']:.2f} (median of {repeats}; {low:.2f}-"
                f"{high:.2f}; {seconds['balance_default']:.2f} s for {steps['balance_default']:g}"
                f" steps in 3 sweeps vs {seconds['lr_finder_default']:.2f} s for "
                f"{steps['lr_finder_default']:g} steps)",
                "none: the price of 3 averaged sweeps",
                None,
            )
        )
        print(headlines[-1]["measure"], headlines[-1]["value"], flush=True)
        for feed in ("dataloader", "slices"):
            low, high = case[f"speedup_vs_{feed}_range"]
            headlines.append(
                headline(
                    f"{name}, {sweep.num_steps} steps: torch-lr-finder ({feed}) time / "
                    "balance range test time",
                    f"{case[f'speedup_vs_{feed}']:.2f} (median of {repeats}; "
                    f"{low:.2f}-{high:.2f}; {case['seconds'][f'lr_finder_{feed}']:.2f} s vs "
                    f"{case['seconds']['balance']:.2f} s)",
                    ">= 1 (no slower)",
                    case[f"speedup_vs_{feed}"] >= 1.0,
                )
            )
            print(headlines[-1]["measure"], headlines[-1]["value"], flush=True)
    write_result(
        NAME,
        {"repeats": repeats, "sweep": sweep.model_dump(mode="json"), "cases": results},
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
