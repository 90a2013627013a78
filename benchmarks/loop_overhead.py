"""Training-loop overhead: samples/s of balance's ``train()`` over a bare PyTorch loop.

Both train the same model on the same in-memory data with the same batch size,
threads, optimizer (SGD, momentum 0.9, weight decay on weights only) and
``OneCycleLR``; both cut batches as index slices of one ``randperm`` per epoch (no
DataLoader) and validate once per epoch. Two figures per case:

- ``steps``: samples/s over the time spent in training steps, timed the same
  way on both sides (from the epoch's shuffle to its last step; balance's
  ``TrainResult.samples_per_second``). Target: at least 0.97.
- ``wall``: the whole call, model construction and per-epoch validation
  included, on both sides.

``extra_ops_per_step`` lists the operators ``train()`` runs more often than the
bare loop, per step, counted by ``torch.profiler`` (a load-independent check
that the hot loop does no extra per-step work: only a ``detach`` of the loss).

``bf16``: samples/s of ``train()`` under ``precision="bf16-mixed"`` over the same
``train()`` in fp32, the two run side by side the same way (no target: what
autocast buys or costs on this CPU), with both runs' final validation accuracy.

Each repeat runs the bare loop and ``train()`` back to back (order alternating)
and the ratio of the pair is kept; the figure is the median over repeats. Runs
are short (about 2 s) and many, so a burst of load from other processes hits one
pair, not a whole side.

Run (about 3 minutes):
    python benchmarks/loop_overhead.py
    python benchmarks/loop_overhead.py --profile   # also print where train() spends time
"""

from __future__ import annotations

import cProfile
import math
import pstats
import time
from typing import Any

import torch
from _common import headline, interleaved, machine, median, parser, spread, write_result
from torch import nn

from balance.config import TrainConfig
from balance.data import Dataset, load_dataset
from balance.models import build_model
from balance.train import train

NAME = "loop_overhead"
TARGET = 0.97

CASES = {
    # The target case: MNIST-1D, cnn1d, batch 100 (36 steps an epoch).
    "mnist1d-cnn1d": TrainConfig(max_lr=0.1, epochs=5),
    # Small steps (digits, mlp, batch 32): per-step Python work shows most here.
    "digits-mlp": TrainConfig(data="digits", model="mlp", batch_size=32, max_lr=0.1, epochs=10),
}


@torch.inference_mode()
def _validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), 1024):
        correct += int((model(x[start : start + 1024]).argmax(1) == y[start : start + 1024]).sum())
    model.train()
    return correct / len(x)


def bare_loop(config: TrainConfig, data: Dataset) -> dict[str, float]:
    """The loop a user would write by hand: samples/s of its steps, and its wall time."""
    started = time.perf_counter()
    max_lr = config.max_lr if config.max_lr is not None else 0.1
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes, config.dropout)
    weights = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups: list[dict[str, Any]] = [
        {"params": weights, "weight_decay": config.weight_decay},
        {"params": others},
    ]
    optimizer = torch.optim.SGD(
        groups,
        lr=max_lr,
        momentum=config.momentum,
        weight_decay=0.0,
    )
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=config.epochs * steps_per_epoch,
        pct_start=config.resolved_pct_start,
        anneal_strategy="linear",
        three_phase=True,
        div_factor=config.div_factor,
        final_div_factor=config.final_div_factor,
    )
    generator = torch.Generator().manual_seed(config.seed)
    criterion = nn.CrossEntropyLoss()
    step_time = 0.0
    model.train()
    for _ in range(config.epochs):
        epoch_started = time.perf_counter()
        order = torch.randperm(len(data.x_train), generator=generator)
        xs, ys = data.x_train[order], data.y_train[order]
        for start in range(0, len(xs), config.batch_size):
            loss = criterion(
                model(xs[start : start + config.batch_size]), ys[start : start + config.batch_size]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        loss.item()  # end of epoch: read the loss once, as balance does
        step_time += time.perf_counter() - epoch_started
        _validate(model, data.x_val, data.y_val)
    samples = config.epochs * len(data.x_train)
    return {
        "samples_per_second": samples / step_time,
        "wall_time": time.perf_counter() - started,
    }


def balance_loop(config: TrainConfig, data: Dataset) -> dict[str, float]:
    started = time.perf_counter()
    result = train(config, data=data)
    return {
        "samples_per_second": result.samples_per_second,
        "wall_time": time.perf_counter() - started,
        "val_accuracy": result.final.val_accuracy if result.final else math.nan,
    }


def run_case(config: TrainConfig, data: Dataset, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(config.threads or torch.get_num_threads())
    bare_loop(config, data)  # warm-up: first-call allocations and thread-pool start
    runs = interleaved(
        {"bare": lambda: bare_loop(config, data), "balance": lambda: balance_loop(config, data)},
        repeats,
    )
    steps = [
        b["samples_per_second"] / a["samples_per_second"]
        for a, b in zip(runs["bare"], runs["balance"], strict=True)
    ]
    wall = [
        a["wall_time"] / b["wall_time"] for a, b in zip(runs["bare"], runs["balance"], strict=True)
    ]
    return {
        "config": config.model_dump(mode="json"),
        "runs": runs,
        "ratio_steps": median(steps),
        "ratio_steps_range": spread(steps),
        "ratio_steps_repeats": steps,
        "ratio_wall": median(wall),
        "ratio_wall_range": spread(wall),
        "ratio_wall_repeats": wall,
        "bare_samples_per_second": median([r["samples_per_second"] for r in runs["bare"]]),
        "balance_samples_per_second": median([r["samples_per_second"] for r in runs["balance"]]),
    }


def precision_case(config: TrainConfig, data: Dataset, repeats: int) -> dict[str, Any]:
    """samples/s of ``train()`` under bf16-mixed over fp32, run side by side."""
    half = config.model_copy(update={"precision": "bf16-mixed"})
    balance_loop(half, data)  # warm-up: autocast's first casts
    runs = interleaved(
        {"fp32": lambda: balance_loop(config, data), "bf16": lambda: balance_loop(half, data)},
        repeats,
    )
    ratios = [
        b["samples_per_second"] / a["samples_per_second"]
        for a, b in zip(runs["fp32"], runs["bf16"], strict=True)
    ]
    return {
        "runs": runs,
        "ratio": median(ratios),
        "ratio_range": spread(ratios),
        "ratio_repeats": ratios,
        **{
            f"{name}_{figure}": median([run[figure] for run in runs[name]])
            for name in runs
            for figure in ("samples_per_second", "val_accuracy")
        },
    }


def extra_ops_per_step(config: TrainConfig, data: Dataset) -> dict[str, float]:
    """Operators ``train()`` calls more often than the bare loop, per training step.

    Counted by ``torch.profiler`` over one run of each (a count, not a time, so
    it does not depend on the machine's load). Per-epoch work (validation, the
    one loss read) shows up as fractions below one.
    """
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for loop in (bare_loop, balance_loop):
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            loop(config, data)
        counts.append({event.key: event.count for event in profiler.key_averages()})
    bare, ours = counts
    steps = config.epochs * math.ceil(len(data.x_train) / config.batch_size)
    extra = {
        name: (ours.get(name, 0) - bare.get(name, 0)) / steps
        for name in sorted(set(bare) | set(ours))
        if ours.get(name, 0) != bare.get(name, 0)
    }
    return {name: round(value, 3) for name, value in extra.items()}


def profile(config: TrainConfig, data: Dataset) -> None:
    """Print the functions ``train()`` spends most of its own time in."""
    train(config, data=data)
    profiler = cProfile.Profile()
    profiler.enable()
    train(config, data=data)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 11 (quick: 1)")
    arguments.add_argument("--profile", action="store_true", help="print a cProfile of train()")
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = args.repeats or (1 if args.quick else 11)
    thread_counts = [1] if args.quick else [1, 2]
    results: dict[str, Any] = {}
    headlines = []
    for name, base in CASES.items():
        data = load_dataset(base.data, validation_fraction=base.validation_fraction)
        for threads in thread_counts:
            config = base.model_copy(
                update={"threads": threads, "epochs": 1 if args.quick else base.epochs}
            )
            if args.profile:
                profile(config, data)
            key = f"{name}/threads={threads}"
            results[key] = case = run_case(config, data, repeats)
            case["extra_ops_per_step"] = extra_ops_per_step(config, data)
            low, high = case["ratio_steps_range"]
            headlines.append(
                headline(
                    f"{key}, batch {config.batch_size}: samples/s of train() / bare loop",
                    f"{case['ratio_steps']:.3f} (median of {repeats}; {low:.3f}-{high:.3f}; "
                    f"{case['balance_samples_per_second']:,.0f} vs "
                    f"{case['bare_samples_per_second']:,.0f} samples/s; wall incl. validation "
                    f"{case['ratio_wall']:.3f})",
                    f">= {TARGET}",
                    case["ratio_steps"] >= TARGET,
                )
            )
            print(headlines[-1]["measure"], headlines[-1]["value"], flush=True)
            case["bf16"] = half = precision_case(config, data, repeats)
            low, high = half["ratio_range"]
            headlines.append(
                headline(
                    f"{key}, batch {config.batch_size}: samples/s of train(), bf16-mixed / fp32",
                    f"{half['ratio']:.3f} (median of {repeats}; {low:.3f}-{high:.3f}; "
                    f"{half['bf16_samples_per_second']:,.0f} vs "
                    f"{half['fp32_samples_per_second']:,.0f} samples/s; val accuracy "
                    f"{half['bf16_val_accuracy']:.3f} vs {half['fp32_val_accuracy']:.3f})",
                )
            )
            print(headlines[-1]["measure"], headlines[-1]["value"], flush=True)
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
