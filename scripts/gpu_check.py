"""The GPU check: range test, fp32, bf16 and fp16 training, a 2-worker study, packed
trials (K = 8, 32, 128) on one CUDA device.

    nox -s gpu                                  # on a CUDA machine
    python scripts/gpu_check.py --device cpu --quick   # the same steps on CPU (a smoke run)

Every figure is measured in this run: samples/s of the same range test and the same
1cycle run on the CPU and on the device (fp32, bf16, fp16 with its loss scaler, and
bf16 streamed from torch Datasets by 2 loader processes into pinned memory), so the
ratios compare like with like. The
study is a 2 x 2 grid with 2 local worker processes sharing the one device in bf16.
Writes ``--out`` (default ``benchmarks/results/gpu_check.json``) and prints a table.
Exits 2 when the device is not there: the check never passes without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from torch.utils.data import TensorDataset

from balance import (
    RangeTestConfig,
    StreamingData,
    StudyConfig,
    TrainConfig,
    find_max_lr,
    sweep,
    train,
)
from balance.config import build
from balance.data import load_dataset
from balance.jsonable import jsonable
from balance.packed import train_packed
from balance.range_test import RangeTestWarning

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
DATA, MODEL, BATCH = "mnist1d-10k", "cnn1d", 128


def base(device: str, precision: str, epochs: int) -> TrainConfig:
    """The run every row measures, on ``device`` in ``precision``."""
    return TrainConfig(
        data=DATA,
        model=MODEL,
        batch_size=BATCH,
        epochs=epochs,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        max_lr=0.5,
    )


def range_test_rate(config: TrainConfig, steps: int) -> dict[str, Any]:
    """Samples/s of a range test of ``steps`` optimizer steps (probes off)."""
    range_config = RangeTestConfig(num_steps=steps, probes=0, noise_scale=False, val_every=0)
    started = time.perf_counter()
    result = find_max_lr(config.model_copy(update={"max_lr": None}), range_config)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "samples_per_second": len(result.lrs) * config.batch_size / seconds,
        "max_lr": result.max_lr,
    }


def streamed(workers: int) -> StreamingData:
    """The same data as torch Datasets, streamed by ``workers`` loader processes."""
    data = load_dataset(DATA)
    return StreamingData(
        TensorDataset(data.x_train, data.y_train),
        TensorDataset(data.x_test, data.y_test),
        val=TensorDataset(data.x_val, data.y_val),
        num_classes=data.num_classes,
        num_workers=workers,
    )


def train_rate(config: TrainConfig, data: StreamingData | None = None) -> dict[str, Any]:
    """Samples/s and accuracy of one 1cycle run."""
    result = train(config, data=data)
    final = result.final
    return {
        "samples_per_second": result.samples_per_second,
        "train_seconds": result.train_time,
        "val_accuracy": final.val_accuracy if final else None,
    }


def packed_rates(device: str, epochs: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Member-samples/s of K fp32 runs trained as one packed model against one run alone.

    Both timed over the whole call (model building and evaluation included, as a trial
    pays them); K solo runs one after the other take K times one, so one is timed.
    """
    config = base(device, "32", epochs)
    started = time.perf_counter()
    alone = train(config)
    seconds = time.perf_counter() - started
    samples = alone.steps * config.batch_size  # about n_train per epoch x epochs
    solo = samples / seconds
    rows: dict[str, Any] = {"solo": {"member_samples_per_second": solo}}
    for k in sizes:
        members = [
            config.model_copy(update={"seed": seed, "weight_decay": 5e-4 * (seed % 4)})
            for seed in range(k)
        ]
        started = time.perf_counter()
        results = train_packed(members)
        seconds = time.perf_counter() - started
        rate = sum(r.steps for r in results) * config.batch_size / seconds
        rows[f"K={k}"] = {"member_samples_per_second": rate, "ratio_to_solo": rate / solo}
    return rows


def study(device: str, precision: str, epochs: int, workers: int) -> dict[str, Any]:
    """A 2 x 2 grid with ``workers`` local processes on ``device``; trials/s and the answer."""
    train_values = base(device, precision, epochs).model_dump(exclude_none=True)
    values = {
        "name": "gpu-check",
        "sampler": "grid",
        "seeds": 1,
        "workers": workers,
        "train": train_values,
        "search": {"weight_decay": [0.0, 5e-4], "dropout": [0.0, 0.1]},
    }
    config = build(StudyConfig, values)
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        result = sweep(config, root=Path(root), workers=workers)
        seconds = time.perf_counter() - started
    return {
        "workers": workers,
        "trials": 4,
        "seconds": seconds,
        "trials_per_hour": 4 * 3600 / seconds,
        "best": result.summary.get("best"),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the check; 2 when the device is not available."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="the device to measure (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing was measured", file=sys.stderr)
        return 2
    epochs, steps = (1, 20) if args.quick else (5, 200)
    warnings.simplefilter("ignore", RangeTestWarning)  # a short sweep's curve may be flat
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_dataset(DATA)  # generated once and cached: no row pays for it
    started = time.perf_counter()
    on = args.device
    for warm in ("32", "bf16-mixed"):  # kernels, allocator, autotuning: before any timing
        train(base(on, warm, 1).model_copy(update={"epochs": 1}))
    rows: dict[str, Any] = {
        "range_test": {
            "cpu fp32": range_test_rate(base("cpu", "32", 1), steps),
            "device bf16": range_test_rate(base(on, "bf16-mixed", 1), steps),
        },
        "train": {
            "cpu fp32": train_rate(base("cpu", "32", epochs)),
            "device fp32": train_rate(base(on, "32", epochs)),
            "device bf16": train_rate(base(on, "bf16-mixed", epochs)),
            "device fp16": train_rate(base(on, "16-mixed", epochs)),  # GradScaler
            # pinned memory, non-blocking copies, 2 loader processes
            "device bf16 streamed": train_rate(base(on, "bf16-mixed", epochs), streamed(2)),
        },
        "study": study(on, "bf16-mixed", epochs, workers=2),
        "packed": packed_rates(on, epochs, (2,) if args.quick else (8, 32, 128)),
    }
    for table in (rows["range_test"], rows["train"]):
        cpu_rate = table["cpu fp32"]["samples_per_second"]
        for row in table.values():
            row["ratio_to_cpu"] = row["samples_per_second"] / cpu_rate
    result = {
        "benchmark": "gpu_check",
        "quick": args.quick,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "data": DATA,
        "model": MODEL,
        "batch_size": BATCH,
        **rows,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(jsonable(result), indent=2) + "\n")
    took = result["seconds"]
    print(f"gpu_check on {result['device_name']} ({took:.0f} s), {DATA} {MODEL} b{BATCH}")
    for name, row in rows["range_test"].items():
        print(
            f"  range test {name:>12}: {row['samples_per_second']:10.0f} samples/s "
            f"(x{row['ratio_to_cpu']:.2f} the CPU)"
        )
    for name, row in rows["train"].items():
        print(
            f"  train {name:>17}: {row['samples_per_second']:10.0f} samples/s "
            f"(x{row['ratio_to_cpu']:.2f} the CPU), val accuracy {row['val_accuracy']:.3f}"
        )
    s = rows["study"]
    print(f"  study, 2 workers, bf16: {s['trials_per_hour']:.0f} trials/h ({s['seconds']:.0f} s)")
    for name, row in rows["packed"].items():
        if name != "solo":
            print(
                f"  packed fp32 {name:>5}: {row['member_samples_per_second']:10.0f} "
                f"member-samples/s (x{row['ratio_to_solo']:.2f} one at a time)"
            )
    print(f"  wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
