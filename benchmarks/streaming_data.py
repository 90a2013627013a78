"""Streaming data: samples/s of ``train()`` on torch Datasets through a DataLoader over in memory.

Both sides train the same model on the same examples with the same seed: the
in-memory side on a :class:`balance.data.Dataset` (batches are index slices of
on-device tensors), the streaming side on :class:`balance.StreamingData` of the same
splits wrapped as ``TensorDataset`` objects (each batch fetched example by example,
collated by the DataLoader and copied to the device). Without augmentation the two
runs are the same step for step (tests/test_objects.py), so the difference is the
batch source alone. The figure is samples/s over the time in training steps
(``TrainResult.samples_per_second``: batch loading included, validation excluded).

- ``ratio``: streaming (``num_workers=0``) over in memory, the median of interleaved
  pairs; below 1 is the price of streaming.
- ``ratio_workers``: streaming with ``num_workers=2`` DataLoader processes over in
  memory (full runs only). A ``TensorDataset`` costs little to read, so worker
  processes can only add their hand-off; they pay off when reading an example is
  slow (files, decoding), which this benchmark does not model.

Run (about a minute on 2 cores):
    python benchmarks/streaming_data.py
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from _common import headline, interleaved, machine, median, parser, spread, write_result
from torch.utils.data import TensorDataset

from balance.config import TrainConfig
from balance.data import Dataset, load_dataset
from balance.streaming import StreamingData
from balance.train import train

NAME = "streaming_data"
HEADLINE_CASE = "mnist1d-cnn1d"

CASES = {
    # The loop_overhead target case: MNIST-1D, cnn1d, batch 100 (36 steps an epoch).
    "mnist1d-cnn1d": TrainConfig(max_lr=0.1, epochs=5),
    # Small, cheap steps (digits, mlp, batch 32): the per-example fetch shows most here.
    "digits-mlp": TrainConfig(data="digits", model="mlp", batch_size=32, max_lr=0.1, epochs=10),
}


def streamed(data: Dataset, num_workers: int) -> StreamingData:
    """The splits of ``data`` as torch Datasets (its own validation split kept)."""
    return StreamingData(
        TensorDataset(data.x_train, data.y_train),
        TensorDataset(data.x_test, data.y_test),
        val=TensorDataset(data.x_val, data.y_val),
        num_classes=data.num_classes,
        num_workers=num_workers,
    )


def run(config: TrainConfig, data: Dataset | StreamingData) -> dict[str, float]:
    started = time.perf_counter()
    result = train(config, data=data)
    return {
        "samples_per_second": result.samples_per_second,
        "wall_time": time.perf_counter() - started,
        "val_accuracy": result.final.val_accuracy if result.final else math.nan,
    }


def run_case(config: TrainConfig, data: Dataset, repeats: int, workers: bool) -> dict[str, Any]:
    variants = {
        "memory": lambda: run(config, data),
        "stream": lambda: run(config, streamed(data, 0)),
    }
    if workers:
        variants["stream_workers"] = lambda: run(config, streamed(data, 2))
    for variant in variants.values():
        variant()  # warm-up: first-call allocations, thread pools, DataLoader imports
    runs = interleaved(variants, repeats)
    case: dict[str, Any] = {"config": config.model_dump(mode="json"), "runs": runs}
    for name in runs:
        case[f"{name}_samples_per_second"] = median([r["samples_per_second"] for r in runs[name]])
    for name, key in (("stream", "ratio"), ("stream_workers", "ratio_workers")):
        if name not in runs:
            continue
        ratios = [
            b["samples_per_second"] / a["samples_per_second"]
            for a, b in zip(runs["memory"], runs[name], strict=True)
        ]
        case[key], case[f"{key}_range"], case[f"{key}_repeats"] = (
            median(ratios),
            spread(ratios),
            ratios,
        )
    # The same run step for step: equal accuracies say the comparison is like for like.
    case["same_accuracy"] = len({r["val_accuracy"] for rs in runs.values() for r in rs}) == 1
    return case


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 11 (quick: 1)")
    arguments.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = machine()
    repeats = args.repeats or (1 if args.quick else 11)
    cases = {HEADLINE_CASE: CASES[HEADLINE_CASE]} if args.quick else CASES
    results: dict[str, Any] = {}
    headlines = []
    for name, base in cases.items():
        data = load_dataset(base.data, validation_fraction=base.validation_fraction)
        config = base.model_copy(
            update={"threads": args.threads, "epochs": 1 if args.quick else base.epochs}
        )
        results[name] = case = run_case(config, data, repeats, workers=not args.quick)
        low, high = case["ratio_range"]
        value = (
            f"{case['ratio']:.3f} (median of {repeats}; {low:.3f}-{high:.3f}; "
            f"{case['stream_samples_per_second']:,.0f} vs "
            f"{case['memory_samples_per_second']:,.0f} samples/s"
        )
        if "ratio_workers" in case:
            value += (
                f"; 2 DataLoader workers {case['ratio_workers']:.3f}, "
                f"{case['stream_workers_samples_per_second']:,.0f} samples/s"
            )
        headlines.append(
            headline(
                f"{name}, batch {config.batch_size}, {args.threads} thread(s): samples/s of "
                "streamed torch Datasets / in memory",
                value + ")",
            )
        )
        print(headlines[-1]["measure"], headlines[-1]["value"], flush=True)
    write_result(
        NAME,
        {
            "ratio": results[HEADLINE_CASE]["ratio"],
            "repeats": repeats,
            "threads": args.threads,
            "cases": results,
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
