"""Packed trials: member-samples/s of K runs trained as one vectorized model against K alone.

Both sides train the same K configs (seeds 0..K-1, weight decays and dropouts from the
default study's grid, one batch size, one max LR): the packed side with one
:func:`balance.packed.train_packed` call, the solo side with K :func:`balance.train.train`
calls one after the other, at the same torch thread count. The figure is
member-samples per second over the wall time of the whole call (model building,
per-epoch validation and the final per-example evaluation included, as a trial pays
them): ``K * n_train * epochs / seconds``.

- ``ratio`` (per case, threads and K): packed over solo, the median of interleaved
  pairs; above 1 packing wins.
- the top-level ``ratio``: the default study's case (MNIST-1D 10k, cnn1d, batch 100)
  at K = 8 and the most threads measured.

Run (a few minutes on 2 cores):
    python benchmarks/packed_trials.py
"""

from __future__ import annotations

import time
from itertools import cycle
from typing import Any

import torch
from _common import headline, interleaved, machine, median, parser, spread, write_result

from balance.config import TrainConfig
from balance.data import Dataset, load_dataset
from balance.packed import train_packed
from balance.train import train

NAME = "packed_trials"
HEADLINE_CASE = "mnist1d-cnn1d"
HEADLINE_K = 8
WEIGHT_DECAYS = (0.0, 1e-4, 5e-4, 2e-3, 1e-2)  # studies/mnist1d-cnn.toml's grid
DROPOUTS = (0.0, 0.1, 0.2)

CASES = {
    # The default study (studies/mnist1d-cnn.toml): 4,000 train / 4,000 validation examples.
    "mnist1d-cnn1d": TrainConfig(
        data="mnist1d-10k", validation_fraction=0.5, max_lr=0.1, batch_size=100, epochs=3
    ),
    # Small, cheap steps: digits, mlp, batch 32.
    "digits-mlp": TrainConfig(
        data="digits", model="mlp", validation_fraction=0.2, max_lr=0.1, batch_size=32, epochs=5
    ),
}


def members(base: TrainConfig, k: int) -> list[TrainConfig]:
    """K configs of one pack: seeds 0..K-1, the grid's weight decays and dropouts in turn."""
    cells = cycle([(wd, p) for wd in WEIGHT_DECAYS for p in DROPOUTS])
    return [
        base.model_copy(update={"seed": seed, "weight_decay": wd, "dropout": p})
        for seed, (wd, p) in zip(range(k), cells, strict=False)
    ]


def timed(run: Any, configs: list[TrainConfig], data: Dataset) -> dict[str, float]:
    started = time.perf_counter()
    results = run(configs, data)
    seconds = time.perf_counter() - started
    samples = sum(len(data.y_train) * len(r.epochs) for r in results)
    return {"seconds": seconds, "member_samples_per_second": samples / seconds}


def packed(configs: list[TrainConfig], data: Dataset) -> list[Any]:
    return train_packed(configs, data=data)


def solo(configs: list[TrainConfig], data: Dataset) -> list[Any]:
    return [train(config, data=data) for config in configs]


def run_k(base: TrainConfig, data: Dataset, k: int, repeats: int) -> dict[str, Any]:
    configs = members(base, k)
    variants = {
        "packed": lambda: timed(packed, configs, data),
        "solo": lambda: timed(solo, configs, data),
    }
    for variant in variants.values():
        variant()  # warm-up: first-call allocations, thread pools, vmap's first trace
    runs = interleaved(variants, repeats)
    ratios = [
        p["member_samples_per_second"] / s["member_samples_per_second"]
        for p, s in zip(runs["packed"], runs["solo"], strict=True)
    ]
    return {
        "runs": runs,
        "packed_member_samples_per_second": median(
            [r["member_samples_per_second"] for r in runs["packed"]]
        ),
        "solo_member_samples_per_second": median(
            [r["member_samples_per_second"] for r in runs["solo"]]
        ),
        "ratio": median(ratios),
        "ratio_range": spread(ratios),
        "ratio_repeats": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    arguments.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch threads (default 1 2)"
    )
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    repeats = args.repeats or (1 if args.quick else 3)
    thread_counts = args.threads or ([1] if args.quick else [1, 2])
    ks = [1, 4] if args.quick else [1, 4, 8, 16]
    cases = {HEADLINE_CASE: CASES[HEADLINE_CASE]} if args.quick else CASES
    results: dict[str, Any] = {}
    headlines = []
    for name, base in cases.items():
        data = load_dataset(base.data, validation_fraction=base.validation_fraction)
        results[name] = {}
        for threads in thread_counts:
            torch.set_num_threads(threads)
            config = base.model_copy(
                update={"threads": threads, "epochs": 1 if args.quick else base.epochs}
            )
            by_k = {str(k): run_k(config, data, k, repeats) for k in ks}
            results[name][str(threads)] = {"config": config.model_dump(mode="json"), "k": by_k}
            value = "; ".join(
                f"K={k}: {case['ratio']:.2f} ({case['ratio_range'][0]:.2f}-"
                f"{case['ratio_range'][1]:.2f}; {case['packed_member_samples_per_second']:,.0f}"
                f" vs {case['solo_member_samples_per_second']:,.0f})"
                for k, case in by_k.items()
            )
            headlines.append(
                headline(
                    f"{name}, batch {config.batch_size}, {threads} thread(s): member-samples/s "
                    f"packed / one at a time (median of {repeats})",
                    value,
                    ">= 1.5 at some K" if name == HEADLINE_CASE else "",
                    max(case["ratio"] for case in by_k.values()) >= 1.5
                    if name == HEADLINE_CASE
                    else None,
                )
            )
            print(headlines[-1]["measure"], headlines[-1]["value"], flush=True)
    top = results[HEADLINE_CASE][str(max(thread_counts))]["k"]
    headline_k = str(HEADLINE_K) if str(HEADLINE_K) in top else max(top, key=int)
    write_result(
        NAME,
        {
            "ratio": top[headline_k]["ratio"],
            "ratio_k": int(headline_k),
            "ratio_threads": max(thread_counts),
            "repeats": repeats,
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
