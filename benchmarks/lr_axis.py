"""The LR as a regularizer, measured: the shipped ``studies/lr-*.toml`` studies end to end.

Each study sweeps ``lr_multiplier`` (x stage 1's max LR of each batch size) against
weight decay at three batch sizes, 3 seeds a cell: MNIST-1D under SGD (coupled L2)
and AdamW (decoupled decay), and digits under SGD. For each it records what issue 16
asks to be shown: the best weight decay per LR level with its interval and ties, the
trend (does the best weight decay fall as the LR grows, as Smith says?), ``k`` of
``max_lr ~ B^k`` with its interval beside the linear and square-root rules, the gradient
noise scale ``B_simple`` per batch size, and each batch size's best accuracy against
its wall time and steps. Reports go to ``reports/<study>/`` (``--reports DIR``).
``--quick`` runs one tiny digits study instead (numbers meaningless).

Run (about 25 minutes on 2 cores):
    python benchmarks/lr_axis.py
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from _common import headline, machine, parser, write_result

from balance.config import StudyConfig, build
from balance.pipeline import sweep
from balance.study_file import load_study_file

NAME = "lr_axis"
ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("lr-mnist1d-sgd", "lr-mnist1d-adamw", "lr-digits-sgd")


def quick_study() -> StudyConfig:
    """A tiny digits grid with every part of the LR axis: 2 LR levels x 2 decays x 3 sizes."""
    return build(  # type: ignore[no-any-return]
        StudyConfig,
        {
            "name": "lr-quick",
            "seeds": 2,
            "workers": 1,
            "train": {"data": "digits", "model": "mlp", "epochs": 2, "batch_size": 32},
            "range_test": {"num_steps": 30, "repeats": 1, "probes": 0},
            "search": {
                "lr_multiplier": [0.5, 1.0],
                "weight_decay": [0.0, 1e-3],
                "batch_size": [16, 32, 64],
            },
        },
    )


def measured(summary: dict[str, Any]) -> dict[str, Any]:
    """What issue 16 asks to be shown, from a study's ``summary.json``."""
    return {
        "best": summary["best"],
        "lr_tradeoff": summary["lr_tradeoff"],
        "batch_scaling": summary["batch_scaling"],
        "noise_scale": summary.get("noise_scale"),
        "batch_sizes": summary["batch_sizes"],
        "axes": summary["axes"],
        "test": {
            side: (summary["test"].get(side) or {}).get("test_accuracy")
            for side in ("chosen", "baseline")
        },
        "wall_time_s": summary["wall_time_s"],
    }


def headlines_of(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The results table's rows of one study: the trend and k."""
    rows = []
    tradeoff = result["lr_tradeoff"]
    if tradeoff is not None:
        trend = tradeoff["trend"]
        rows.append(
            headline(
                f"{name}: best weight decay as the LR grows ({trend['unit']})",
                f"{trend['direction']}: {trend['slope']:+.2f} "
                f"[{trend['low']:+.2f}, {trend['high']:+.2f}]",
                "reported as measured (Smith: falls)",
            )
        )
    scaling = result["batch_scaling"]
    if scaling is not None and scaling["low"] is not None:
        rows.append(
            headline(
                f"{name}: k of max_lr ~ B^k from the range tests",
                f"{scaling['k']:.2f} [{scaling['low']:.2f}, {scaling['high']:.2f}]; linear "
                f"{'in' if scaling['rules']['linear'] else 'out'}, sqrt "
                f"{'in' if scaling['rules']['sqrt'] else 'out'}",
                "reported as measured",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the studies, print and write what they found."""
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument(
        "--reports", type=Path, default=ROOT / "reports", help="root of the studies' reports"
    )
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = (
        [quick_study()]
        if args.quick
        else [load_study_file(ROOT / "studies" / f"{name}.toml") for name in STUDIES]
    )
    results: dict[str, Any] = {}
    headlines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) if args.quick else args.reports
        for config in configs:
            began = time.perf_counter()
            summary = sweep(config, root=root).summary
            results[config.name] = {**measured(summary), "sweep_s": time.perf_counter() - began}
            headlines += headlines_of(config.name, results[config.name])
            print(config.name, f"{results[config.name]['sweep_s']:.0f} s", flush=True)
    for row in headlines:
        print(row["measure"], row["value"], flush=True)
    write_result(
        NAME,
        {"studies": results},
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
