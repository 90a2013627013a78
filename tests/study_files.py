"""Tiny study files written by the tests that drive the real ``balance`` command line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from balance.config import StudyConfig, build
from balance.record import StudyRecord, load_record
from balance.storage import open_storage, storage_url

ROOT = Path(__file__).parent.parent
BALANCE = [sys.executable, "-m", "balance.cli"]


def merged(values: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``values`` with ``overrides`` applied, tables merged one level deep."""
    result = dict(values)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


def study_config(values: dict[str, Any], **overrides: Any) -> StudyConfig:
    """``values`` with ``overrides`` applied, validated."""
    return build(StudyConfig, merged(values, **overrides))  # type: ignore[no-any-return]


def load_study(config: StudyConfig, root: Path) -> optuna.Study:
    """The stored study of ``config`` under ``root`` (the default journal file)."""
    return optuna.load_study(
        study_name=config.name, storage=open_storage(storage_url(config, None, root))
    )


def record_of(study: optuna.Study, config: StudyConfig) -> StudyRecord:
    """The study read as balance's analysis and report read it."""
    return load_record(study, config, storage="test")


# The test models that hold, crash or wait for other workers act on their training steps:
# stage 1 must not train them (its noise-scale epoch would), so their studies skip it.
TRIALS_ONLY = {"num_steps": 20, "noise_scale": False}


def tiny_values(name: str, **overrides: Any) -> dict[str, Any]:
    """A digits/mlp grid of 2 x 2 cells, one epoch per run, max LR given (no range test)."""
    values: dict[str, Any] = {
        "name": name,
        "sampler": "grid",
        "seeds": 1,
        "train": {
            "data": "digits",
            "model": "mlp",
            "epochs": 1,
            "batch_size": 64,
            "threads": 1,
            "max_lr": 0.1,
        },
        "range_test": {"num_steps": 20},
        "search": {"weight_decay": [0.0, 1e-3], "dropout": [0.0, 0.2]},
    }
    return merged(values, **overrides)


def toml_text(values: dict[str, Any]) -> str:
    """TOML for a study: top-level keys first, then one table per dict (one level deep)."""

    def value(item: Any) -> str:
        if isinstance(item, dict):
            return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in item.items()) + " }"
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, float) and not math.isfinite(item):
            return str(item)  # TOML's own inf, -inf and nan
        return json.dumps(item)  # strings, numbers and booleans read the same in TOML

    # TOML has no null: a None is left out, which means the same (the field's default).
    lines = [f"{k} = {value(v)}" for k, v in values.items() if not isinstance(v, dict | None)]
    for key, table in values.items():
        if isinstance(table, dict):
            rows = (f"{k} = {value(v)}" for k, v in table.items() if v is not None)
            lines += ["", f"[{key}]", *rows]
    return "\n".join(lines) + "\n"


def write_study(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(toml_text(values))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a ``balance`` subprocess: this checkout importable, one thread."""
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def load(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def cells_by_state(study: optuna.Study, state: TrialState) -> list[str]:
    """Cell keys of the trials in ``state`` (surplus grid trials left out), sorted."""
    return sorted(
        t.user_attrs["cell"]
        for t in study.get_trials(deepcopy=False, states=(state,))
        if not t.user_attrs.get("surplus")
    )


def stored_cells(
    cells: dict[tuple[int, float, float], tuple[float, float, int]], name: str = "stored"
) -> tuple[optuna.Study, StudyRecord]:
    """A real in-memory study whose cells ``(batch_size, weight_decay, dropout)`` reached
    ``(mean, std, seeds)`` of validation accuracy, one completed trial per cell.

    The trials hold seed runs in balance's stored form (``SeedRun.to_attrs``), spread so
    that their mean and population std are the ones asked for; analysis then reads them
    through the real record, frames and grids, as it reads a trained study.
    """
    from optuna.distributions import CategoricalDistribution

    from balance.cells import cell_key
    from balance.runs import Curve, SeedRun

    axes = {
        name: sorted({key[index] for key in cells})
        for index, name in enumerate(("batch_size", "weight_decay", "dropout"))
    }
    config = study_config(
        {
            "name": name,
            "sampler": "grid",
            "seeds": max(seeds for _, _, seeds in cells.values()),
            "train": {"data": "digits", "model": "mlp", "max_lr": 0.1},
            "search": axes,
        }
    )
    distributions = {name: CategoricalDistribution(values) for name, values in axes.items()}
    study = optuna.create_study(direction="maximize")
    for (batch_size, weight_decay, dropout), (mean, std, seeds) in cells.items():
        spread = {1: [0.0], 2: [-1.0, 1.0], 3: [-(1.5**0.5), 0.0, 1.5**0.5]}[seeds]
        accuracies = [mean + std * offset for offset in spread]
        params = {"weight_decay": weight_decay, "dropout": dropout, "batch_size": batch_size}
        runs = [
            SeedRun(seed, acc, 0.4, 0.5, 10, Curve([1], [0.5], [0.4], [acc])).to_attrs()
            for seed, acc in enumerate(accuracies)
        ]
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=sum(accuracies) / len(accuracies),
                user_attrs={"cell": cell_key(params), "max_lr": 0.1, "runs": runs},
            )
        )
    return study, record_of(study, config)


def wait_until(condition, what: str, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` (observable state, not a clock) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
