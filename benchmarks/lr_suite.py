"""The LR-selection suite: does a max-LR rule hold on problems it was not tuned on?

Thirty-two cases vary the data (MNIST-1D sequences, digits images, a synthetic
table, synthetic spirals, synthetic noisy waveforms), the model (MLPs of width 64
and 512, a 1-D CNN, a small convnet), the optimizer (SGD with momentum, Adam,
AdamW), the batch size (16 to 512) and the budget. They are split into
**development** (rules and defaults are chosen there) and **evaluation** (reported
only); the split is written below, with its history: each evaluation set was
scored once and then became development, and a new one, fixed before the next
round of tuning, took its place (three so far).

For each case the reference is a brute force under the same 1cycle policy: at
least 13 max LRs on a quarter-decade log grid (extended while the best sits at
an end), 4 seeds each, final validation accuracy on a split of 431 to 1,500
examples. A method's score on a case is the reference's mean accuracy at the LR
it suggests, read by linear interpolation in log LR (an LR outside the measured
range is trained directly, 4 seeds, and joins the reference); its **regret** is
the best reference mean minus that score, in points. Every method is scored on
the same reference, so its own noise moves all methods together; the interval
beside each mean regret resamples the reference seeds (bootstrap, 90%).

Methods: balance's default (``choose_max_lr`` as it ships: the curve's answer,
then 5 probes; 3 seeds), the curve's answer alone, every other balance rule read
off the same range tests, torch-lr-finder's steepest point (one 100-step sweep
from 1e-7 to 10, its defaults, ``plot(suggest_lr=True)``), and fastai's
``valley`` and ``minimum`` (a tenth of the loss-minimum LR) on a sweep with
fastai's ``lr_find`` defaults (1e-7 to 10 in 100 steps, EMA 0.98, stop at 4x the
best loss, the first tenth and last 5 points left out), run by balance's own
loop since fastai is not installed. The same run measures the super-convergence
verdict against speed-ups (``VERDICT_CASES``).

The caches under ``benchmarks/results/lr_suite/`` keep every training and every
raw sweep (case, seed, LR), so re-scoring a rule costs nothing. Run:

    python benchmarks/lr_suite.py reference   # the brute force (about 40 min on 2 cores)
    python benchmarks/lr_suite.py sweeps      # raw range tests of every case (about 5 min)
    python benchmarks/lr_suite.py tune        # curve rules on the development cases
    python benchmarks/lr_suite.py probes      # probe settings on the development cases
    python benchmarks/lr_suite.py             # the report: every method, every case (~15 min)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, headline, machine, parser, write_result
from joblib import Parallel, delayed

from balance.config import ConfigError, RangeTestConfig, TrainConfig
from balance.data import Dataset, load_dataset
from balance.loop import prepare
from balance.optim import build_optimizer
from balance.range_test import (
    RangeTestWarning,
    find_max_lr,
    rule_curve,
    smooth,
    suggest_minimum,
    suggest_onset,
    suggest_steepest,
    suggest_valley,
)
from balance.train import choose_max_lr, probe_lrs, train

NAME = "lr_suite"
CACHE = RESULTS / "lr_suite"
REFERENCE_SEEDS = (0, 1, 2, 3)
SUGGESTION_SEEDS = (0, 1, 2)
SWEEP_SEEDS = tuple(range(len(SUGGESTION_SEEDS) + 2))  # 3 averaged sweeps per suggestion seed
DIRECT_SEEDS = (10, 11, 12, 13)  # the default's own LRs, trained: no probe's or reference's seed
QUARTER_DECADE = 10**0.25
GRID_POINTS = 13
# The brute-force grids: three decades in quarter-decade steps around where each
# optimizer family's 1cycle peak usually lies; extended while the best is at an edge.
GRID_START = {"sgd": 10**-2.5, "adam": 10**-4.0, "adamw": 10**-4.0}
MAX_EXTENSION = 4  # grid points added per side at most
DATA = "_lr_suite_data"


@dataclass(frozen=True)
class Case:
    """One LR-selection problem: what is trained, and whether rules may be tuned on it."""

    name: str
    split: str  # "dev" (rules are chosen here) or "eval" (reported only)
    config: TrainConfig  # max_lr and seed are set per run


DATA_SETTINGS: dict[str, dict[str, Any]] = {
    "mnist1d": {"data": "mnist1d", "validation_fraction": 0.3},  # 2,800 train / 1,200 val
    "digits": {"data": "digits", "validation_fraction": 0.3},  # 1,006 / 431
    "tabular": {"data": f"{DATA}:tabular", "validation_fraction": 0.25},  # 4,500 / 1,500
    "spirals": {"data": f"{DATA}:spirals", "validation_fraction": 0.25},  # 4,500 / 1,500
    "waves": {"data": f"{DATA}:waves", "validation_fraction": 0.25},  # 4,500 / 1,500
}
MODELS = {
    "mlp64": f"{DATA}:mlp64",
    "mlp512": f"{DATA}:mlp512",
    "cnn1d": "cnn1d",
    "convnet": "convnet",
}
WEIGHT_DECAY = {"sgd": 5e-4, "adam": 5e-4, "adamw": 1e-2}  # L2 for sgd/adam, decoupled for adamw


def _case(split: str, data: str, model: str, optimizer: str, batch: int, epochs: int) -> Case:
    name = f"{data}-{model}-{optimizer}-b{batch}"
    config = TrainConfig(
        **DATA_SETTINGS[data],
        model=MODELS[model],
        optimizer=optimizer,
        weight_decay=WEIGHT_DECAY[optimizer],
        dropout=0.0,
        batch_size=batch,
        epochs=epochs,
        threads=1,
    )
    return Case(name, split, config)


# Fixed before any rule was scored: each data set and each optimizer appears on both
# sides, as do small and large batches. Nothing marked "eval" may be used to choose a
# rule, a setting or a default.
CASES: dict[str, Case] = {
    case.name: case
    for case in (
        # split  data       model     optimizer batch epochs
        _case("dev", "mnist1d", "cnn1d", "sgd", 100, 12),
        _case("dev", "digits", "mlp512", "adam", 32, 15),
        _case("dev", "tabular", "mlp64", "sgd", 32, 6),
        _case("dev", "spirals", "mlp512", "adamw", 64, 10),
        _case("dev", "digits", "convnet", "sgd", 64, 15),
        _case("dev", "tabular", "mlp512", "adam", 512, 25),
        _case("dev", "mnist1d", "mlp64", "adamw", 256, 40),
        _case("dev", "spirals", "mlp64", "sgd", 512, 60),
        # The first evaluation set. It was scored once, on the curve-only default (commit
        # 660e64b: mean regret 7.47 points, worst 44.72), and has been development since.
        _case("dev", "mnist1d", "cnn1d", "adam", 32, 5),
        _case("dev", "digits", "mlp64", "sgd", 16, 10),
        _case("dev", "tabular", "mlp512", "adamw", 128, 12),
        _case("dev", "spirals", "mlp512", "sgd", 32, 5),
        _case("dev", "digits", "convnet", "adamw", 128, 30),
        _case("dev", "mnist1d", "mlp512", "sgd", 512, 40),
        _case("dev", "tabular", "mlp64", "adamw", 16, 3),
        _case("dev", "spirals", "mlp64", "adam", 128, 15),
        # The second evaluation set, fixed before the confirmation probes were tuned. It
        # was scored once, on best-probe selection (commit 36c6dc5: mean regret 1.03
        # points, median 0.50, worst 4.67), and has been development since.
        _case("dev", "mnist1d", "cnn1d", "sgd", 32, 6),
        _case("dev", "digits", "mlp512", "sgd", 128, 40),
        _case("dev", "tabular", "mlp64", "adam", 64, 8),
        _case("dev", "spirals", "mlp512", "adam", 32, 5),
        _case("dev", "digits", "convnet", "adam", 32, 8),
        _case("dev", "mnist1d", "mlp64", "sgd", 64, 20),
        _case("dev", "tabular", "mlp512", "sgd", 256, 30),
        _case("dev", "spirals", "mlp64", "adamw", 32, 8),
        # The evaluation set, fixed before the probes' selection was tuned; its new data
        # generator (waves) was added with it.
        _case("eval", "waves", "cnn1d", "sgd", 64, 6),
        _case("eval", "waves", "cnn1d", "adamw", 128, 10),
        _case("eval", "waves", "mlp512", "adam", 32, 5),
        _case("eval", "mnist1d", "cnn1d", "adamw", 64, 8),
        _case("eval", "digits", "mlp64", "adamw", 32, 12),
        _case("eval", "tabular", "mlp64", "sgd", 256, 20),
        _case("eval", "spirals", "mlp512", "sgd", 128, 15),
        _case("eval", "mnist1d", "mlp512", "adam", 128, 20),
    )
}


def cases_of(split: str | None, names: Iterable[str] | None = None) -> list[Case]:
    """The cases of one split (or all), optionally only those named."""
    chosen = [case for case in CASES.values() if split is None or case.split == split]
    if names:
        wanted = set(names)
        chosen = [case for case in chosen if case.name in wanted]
    return chosen


# -- caches ---------------------------------------------------------------------------


def _lr_key(lr: float) -> str:
    return f"{lr:.6g}"


class Cache:
    """A JSON file of results keyed by strings, written after every batch of new entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [key for key in keys if key not in self.entries]

    def update(self, new: dict[str, Any]) -> None:
        self.entries.update(new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, sort_keys=True) + "\n")
        tmp.replace(self.path)


def data_of(config: TrainConfig) -> Dataset:
    """The case's data set (generated or read from balance's cache: milliseconds)."""
    return load_dataset(config.data, validation_fraction=config.validation_fraction)


def _round(values: Iterable[float]) -> list[float | None]:
    return [float(f"{value:.6g}") if math.isfinite(value) else None for value in values]


# -- the brute force --------------------------------------------------------------------


def train_at(config: TrainConfig, max_lr: float, seed: int) -> dict[str, Any]:
    """One 1cycle run's final validation accuracy (chance level when it diverged)."""
    data = data_of(config)
    run = config.model_copy(update={"max_lr": max_lr, "seed": seed})
    result = train(run, data=data)
    diverged = result.diverged is not None or result.final is None
    chance = 1.0 / data.num_classes
    accuracy = chance if diverged else float(result.final.val_accuracy)
    return {"val_accuracy": accuracy, "diverged": diverged, "steps": result.steps}


def grid_of(case: Case) -> list[float]:
    """The case's first brute-force grid: 13 LRs a quarter decade apart."""
    start = GRID_START[case.config.optimizer]
    return [start * QUARTER_DECADE**i for i in range(GRID_POINTS)]


def _train_keys(
    case: Case, lrs: Iterable[float], seeds: Iterable[int] | None = None
) -> dict[str, tuple[str, float, int]]:
    return {
        f"{case.name}|{_lr_key(lr)}|{seed}": (case.name, lr, seed)
        for lr in lrs
        for seed in (REFERENCE_SEEDS if seeds is None else seeds)
    }


def train_points(cache: Cache, jobs: int, wanted: dict[str, tuple[str, float, int]]) -> None:
    """Train every (case, LR, seed) not yet in the cache, ``jobs`` processes at once."""
    todo = cache.missing(wanted)
    if not todo:
        return
    started = time.perf_counter()
    print(f"training {len(todo)} runs ...", file=sys.stderr, flush=True)
    chunk = max(jobs * 8, 16)
    for first in range(0, len(todo), chunk):
        keys = todo[first : first + chunk]
        results = Parallel(n_jobs=jobs)(
            delayed(train_at)(CASES[wanted[key][0]].config, wanted[key][1], wanted[key][2])
            for key in keys
        )
        cache.update(dict(zip(keys, results, strict=True)))
        done = first + len(keys)
        print(
            f"  {done}/{len(todo)} runs, {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def reference_curve(cache: Cache, case: Case) -> dict[float, list[float]]:
    """Every LR measured on this case -> its per-seed validation accuracies."""
    curve: dict[float, list[float]] = {}
    prefix = f"{case.name}|"
    for key, entry in cache.entries.items():
        if key.startswith(prefix):
            _, lr, _seed = key.split("|")
            curve.setdefault(float(lr), []).append(entry["val_accuracy"])
    return {lr: curve[lr] for lr in sorted(curve) if len(curve[lr]) == len(REFERENCE_SEEDS)}


def run_reference(cases: list[Case], cache: Cache, jobs: int) -> None:
    """The brute force: each case's grid, extended a point at a time while its best is at an end."""
    train_points(
        cache, jobs, {k: v for case in cases for k, v in _train_keys(case, grid_of(case)).items()}
    )
    for _ in range(MAX_EXTENSION):
        wanted: dict[str, tuple[str, float, int]] = {}
        for case in cases:
            curve = reference_curve(cache, case)
            lrs = list(curve)
            means = [float(np.mean(curve[lr])) for lr in lrs]
            best = int(np.argmax(means))
            if best == 0:
                wanted.update(_train_keys(case, [lrs[0] / QUARTER_DECADE]))
            elif best == len(lrs) - 1:
                wanted.update(_train_keys(case, [lrs[-1] * QUARTER_DECADE]))
        if not wanted:
            return
        train_points(cache, jobs, wanted)


# -- raw sweeps -------------------------------------------------------------------------

# balance's default sweep runs 1e-5 -> 10 in 200 steps; the cached sweeps go on at the
# same rate for two more decades with a lenient stop, so any stop rule, smoother or
# extension can be replayed on their prefixes exactly.
SWEEP_RATE = 10 ** (6 / 199)
LONG_SWEEP = RangeTestConfig(
    start_lr=1e-5,
    end_lr=1e-5 * SWEEP_RATE**265,
    num_steps=266,
    diverge_threshold=50.0,
    val_every=10,
    repeats=1,
)
FASTAI_SWEEP = RangeTestConfig(
    start_lr=1e-7,
    end_lr=10.0,
    num_steps=100,
    ema_beta=0.98,
    diverge_threshold=4.0,
    val_every=0,
    repeats=1,
    skip_start=0,
)
LR_FINDER_SWEEP = RangeTestConfig(start_lr=1e-7, end_lr=10.0, num_steps=100, repeats=1)


def sweep_of(config: TrainConfig, range_config: RangeTestConfig, seed: int) -> dict[str, Any]:
    """One raw range test of the case (losses, validation accuracies) at ``seed``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeTestWarning)
        result = find_max_lr(
            config.model_copy(update={"seed": seed}), range_config, data=data_of(config)
        )
    return {
        "lrs": _round(result.lrs),
        "losses": _round(result.losses),
        "smoothed": _round(result.smoothed),
        "val_steps": result.val_steps,
        "val_accuracies": _round(result.val_accuracies),
    }


def lr_finder_of(config: TrainConfig, seed: int) -> dict[str, Any]:
    """torch-lr-finder's steepest-gradient LR on one sweep with its defaults.

    The model and optimizer are the ones balance would test; the optimizer starts
    at 1e-7 as torch-lr-finder's README sets it; batches come from its documented
    ``DataLoader(TensorDataset, shuffle=True)``; the suggestion is what
    ``plot(suggest_lr=True)`` returns (it skips the first 10 and last 5 points).
    ``None`` when the curve is too short for it to suggest.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.data import DataLoader, TensorDataset
    from torch_lr_finder import LRFinder

    data = data_of(config)
    run = config.model_copy(update={"seed": seed})
    _, model, _ = prepare(run, data)
    optimizer = build_optimizer(model, run, LR_FINDER_SWEEP.start_lr)
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
        finder.range_test(loader, end_lr=LR_FINDER_SWEEP.end_lr, num_iter=LR_FINDER_SWEEP.num_steps)
        finder.reset()
        try:
            shown = finder.plot(suggest_lr=True, ax=ax)  # (ax, lr), or ax when too short
        except Exception:  # its plot raises on curves it cannot draw
            shown = None
    plt.close(figure)
    return {"lr": float(shown[1]) if isinstance(shown, tuple) else None}


def run_sweeps(cases: list[Case], cache: Cache, jobs: int) -> None:
    """Cache each case's long balance sweeps, fastai-default sweeps and torch-lr-finder answers."""
    tasks: dict[str, Callable[[], dict[str, Any]]] = {}
    for case in cases:
        for seed in SWEEP_SEEDS:
            tasks[f"{case.name}|balance|{seed}"] = partial(sweep_of, case.config, LONG_SWEEP, seed)
        for seed in SUGGESTION_SEEDS:
            tasks[f"{case.name}|fastai|{seed}"] = partial(sweep_of, case.config, FASTAI_SWEEP, seed)
            tasks[f"{case.name}|torch-lr-finder|{seed}"] = partial(lr_finder_of, case.config, seed)
    todo = cache.missing(tasks)
    print(f"sweeping {len(todo)} range tests ...", file=sys.stderr, flush=True)
    for first in range(0, len(todo), 32):
        keys = todo[first : first + 32]
        results = Parallel(n_jobs=jobs)(delayed(tasks[key])() for key in keys)
        cache.update(dict(zip(keys, results, strict=True)))
        print(f"  {first + len(keys)}/{len(todo)}", file=sys.stderr, flush=True)


# -- scoring ----------------------------------------------------------------------------


class Reference:
    """A case's brute force: LRs x seeds of final validation accuracy."""

    def __init__(self, curve: dict[float, list[float]]) -> None:
        self.lrs = np.array(sorted(curve))
        self.accuracies = np.array([curve[lr] for lr in self.lrs])  # (LRs, seeds)

    def means(self, seeds: np.ndarray | None = None) -> np.ndarray:
        """Mean accuracy per LR over the seeds (or over a resample of seed indices)."""
        chosen = self.accuracies if seeds is None else self.accuracies[:, seeds]
        return chosen.mean(axis=1)

    def covers(self, lr: float) -> bool:
        """Whether ``lr`` lies inside the measured LRs (interpolation, not extrapolation)."""
        # Cache keys keep 6 significant digits: LRs that close to an end are on it.
        return bool(self.lrs[0] * (1 - 1e-5) <= lr <= self.lrs[-1] * (1 + 1e-5))

    def at(self, lr: float, means: np.ndarray) -> float:
        """The mean accuracy at ``lr``, linear in log LR between measured LRs."""
        if not self.covers(lr):
            raise ValueError(f"LR {lr:g} lies outside {self.lrs[0]:g} .. {self.lrs[-1]:g}")
        position = min(max(math.log(lr), math.log(self.lrs[0])), math.log(self.lrs[-1]))
        return float(np.interp(position, np.log(self.lrs), means))

    def best_lr(self) -> float:
        return float(self.lrs[int(np.argmax(self.means()))])


def references(cache: Cache, cases: list[Case]) -> dict[str, Reference]:
    """Each case's reference from the training cache."""
    return {case.name: Reference(reference_curve(cache, case)) for case in cases}


def regrets(reference: Reference, lrs: list[float], seeds: np.ndarray | None = None) -> list[float]:
    """Points lost against the best reference mean by each suggested LR."""
    means = reference.means(seeds)
    best = float(means.max())
    return [100.0 * (best - reference.at(lr, means)) for lr in lrs]


def ensure_covered(
    cache: Cache, jobs: int, suggested: dict[str, dict[str, list[float | None]]]
) -> None:
    """Train (4 seeds) every suggested LR that lies outside its case's reference."""
    refs = references(cache, cases_of(None, suggested))
    wanted: dict[str, tuple[str, float, int]] = {}
    for case_name, methods in suggested.items():
        for lrs in methods.values():
            for lr in lrs:
                if lr is not None and not refs[case_name].covers(lr):
                    wanted.update(_train_keys(CASES[case_name], [lr]))
    train_points(cache, jobs, wanted)


def score(
    cache: Cache, suggested: dict[str, dict[str, list[float | None]]], boot: int = 1000
) -> dict[str, Any]:
    """Regret of every method on every case, with a bootstrap over the reference seeds.

    ``suggested`` is case -> method -> one LR per suggestion seed (None: no answer,
    scored as the worst LR of the reference). Returns per-case rows and, per method,
    the mean, median and worst regret over the cases with a 90% interval of the mean.
    """
    refs = references(cache, cases_of(None, suggested))
    rng = np.random.default_rng(0)
    methods = sorted({method for per_case in suggested.values() for method in per_case})
    samples = [rng.integers(0, len(REFERENCE_SEEDS), len(REFERENCE_SEEDS)) for _ in range(boot)]

    def case_regret(name: str, method: str, seeds: np.ndarray | None) -> float:
        reference, lrs = refs[name], suggested[name][method]
        means = reference.means(seeds)
        worst = 100.0 * float(means.max() - means.min())
        lost = [
            worst if lr is None else value
            for lr, value in zip(
                lrs, regrets(reference, [lr or reference.lrs[0] for lr in lrs], seeds), strict=True
            )
        ]
        return float(np.mean(lost))

    rows = {
        name: {
            method: {
                "lrs": suggested[name][method],
                "regret": case_regret(name, method, None),
                "lr_spread": _spread(suggested[name][method]),
            }
            for method in methods
        }
        | {"_best_lr": refs[name].best_lr(), "_best": 100.0 * float(refs[name].means().max())}
        for name in suggested
    }
    summary = {}
    for method in methods:
        per_case = [rows[name][method]["regret"] for name in suggested]
        boot_means = [
            float(np.mean([case_regret(name, method, sample) for name in suggested]))
            for sample in samples
        ]
        summary[method] = {
            "mean": float(np.mean(per_case)),
            "median": float(np.median(per_case)),
            "worst": float(np.max(per_case)),
            "mean_interval": (
                [float(np.percentile(boot_means, 5)), float(np.percentile(boot_means, 95))]
                if boot_means
                else None
            ),
        }
    return {"cases": rows, "methods": summary}


def score_trained(
    cache: Cache,
    direct: Cache,
    jobs: int,
    suggested: dict[str, list[float | None]],
    boot: int = 1000,
) -> dict[str, Any]:
    """The default's regret with its own LRs trained (``DIRECT_SEEDS``), not interpolated.

    Interpolation in log LR reads a straight line between grid points, which lies
    below a peaked curve: an LR between two grid points near the optimum scores lower
    than it would train. Here each suggested LR is trained on 4 seeds that neither
    the probes nor the reference used, and scored against the reference's best mean
    (a maximum over noisy means, so biased up: this regret errs high). ``suggested``
    is case -> one LR per suggestion seed. The interval resamples both sets of seeds.
    """
    refs = references(cache, cases_of(None, suggested))
    train_points(
        direct,
        jobs,
        {
            key: value
            for name, lrs in suggested.items()
            for key, value in _train_keys(
                CASES[name], [lr for lr in lrs if lr], DIRECT_SEEDS
            ).items()
        },
    )

    def trained(name: str, lr: float) -> np.ndarray:
        keys = _train_keys(CASES[name], [lr], DIRECT_SEEDS)
        return np.array([direct.entries[key]["val_accuracy"] for key in keys])

    rng = np.random.default_rng(1)

    def case_regret(name: str, resample: bool) -> float:
        reference = refs[name]
        ref_seeds = (
            rng.integers(0, len(REFERENCE_SEEDS), len(REFERENCE_SEEDS)) if resample else None
        )
        means = reference.means(ref_seeds)
        lost = []
        for lr in suggested[name]:
            if lr is None:
                lost.append(100.0 * float(means.max() - means.min()))
                continue
            runs = trained(name, lr)
            if resample:
                runs = runs[rng.integers(0, len(runs), len(runs))]
            lost.append(100.0 * float(means.max() - runs.mean()))
        return float(np.mean(lost))

    per_case = {name: case_regret(name, False) for name in suggested}
    values = list(per_case.values())
    boot_means = [np.mean([case_regret(name, True) for name in suggested]) for _ in range(boot)]
    return {
        "cases": per_case,
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "worst": float(np.max(values)),
        "mean_interval": [
            float(np.percentile(boot_means, 5)),
            float(np.percentile(boot_means, 95)),
        ],
    }


def _spread(lrs: list[float | None]) -> float | None:
    known = [lr for lr in lrs if lr is not None]
    return max(known) / min(known) if len(known) == len(lrs) and known else None


# -- replaying range tests ----------------------------------------------------------------

DEFAULT_STEPS = 200  # balance's default sweep: 1e-5 -> 10


def _as_float(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if value is None else value for value in values], dtype=float)


def stop_length(losses: np.ndarray, beta: float, threshold: float, limit: int) -> int:
    """Steps a sweep records under ``balance.range_test``'s online stop (the last one included)."""
    average, best = 0.0, math.inf
    for step, value in enumerate(losses[:limit]):
        if not math.isfinite(value):
            return step + 1
        average = beta * average + (1 - beta) * value
        current = average / (1 - beta ** (step + 1))
        best = min(best, current)
        if current > threshold * best:
            return step + 1
    return min(limit, len(losses))


@dataclass(frozen=True)
class Curve:
    """The step-by-step mean of a suggestion seed's sweeps, as ``find_max_lr`` averages them."""

    lrs: np.ndarray
    losses: np.ndarray
    val_lrs: np.ndarray
    val_accuracies: np.ndarray
    stopped: bool  # the online divergence stop ended it


def replay(sweeps: list[dict[str, Any]], *, steps: int, beta: float, threshold: float) -> Curve:
    """What ``find_max_lr`` with ``repeats=len(sweeps)`` and ``num_steps=steps`` would have seen."""
    raws = [_as_float(sweep["losses"]) for sweep in sweeps]
    lengths = [stop_length(raw, beta, threshold, steps) for raw in raws]
    length = min(lengths)
    stopped = length < steps  # one sweep stopped (or its cached record ended) early
    val_count = min(sum(step < length for step in sweep["val_steps"]) for sweep in sweeps)
    val = np.mean([_as_float(sweep["val_accuracies"])[:val_count] for sweep in sweeps], axis=0)
    lrs = _as_float(sweeps[0]["lrs"])[:length]
    val_steps = sweeps[0]["val_steps"][:val_count]
    return Curve(
        lrs=lrs,
        losses=np.mean([raw[:length] for raw in raws], axis=0),
        val_lrs=np.array([lrs[step] for step in val_steps]),
        val_accuracies=val,
        stopped=stopped,
    )


def sweeps_for(sweeps: Cache, case: Case, seed: int, repeats: int = 3) -> list[dict[str, Any]]:
    """The cached raw sweeps that ``find_max_lr`` at ``seed`` averages (seed, seed + 1, ...)."""
    return [sweeps.entries[f"{case.name}|balance|{seed + offset}"] for offset in range(repeats)]


def fastai_suggestions(sweep: dict[str, Any]) -> dict[str, float]:
    """fastai's ``valley`` and ``minimum`` exactly as ``lr_find`` computes them (fastai 2.7).

    ``lr_find`` drops the first tenth and the last 5 recorded points, then reads
    its smoothed losses: ``minimum`` is a tenth of the LR at the lowest loss;
    ``valley`` takes the longest decreasing subsequence and returns the point
    ``start + int(len/3) + int(len/6)`` of it, ``start`` as fastai counts it.
    """
    num_it = FASTAI_SWEEP.num_steps
    lrs = _as_float(sweep["lrs"])[num_it // 10 : -5]
    losses = _as_float(sweep["smoothed"])[num_it // 10 : -5]
    n = len(losses)
    lds, max_start, max_end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    valley = float(lrs[max_start + int(sections) + int(sections / 2)])
    minimum = float(lrs[int(np.nanargmin(losses))] / 10)
    return {"fastai valley": valley, "fastai minimum/10": minimum}


# -- tuning on the development cases -------------------------------------------------------

SMOOTHERS: dict[str, Callable[[np.ndarray], list[float]]] = {
    "ema0.98": lambda losses: smooth(list(losses), 0.98),
    "zero-phase0.7": lambda losses: rule_curve(list(losses), 0.7, 3),
    "zero-phase0.8": lambda losses: rule_curve(list(losses), 0.8, 3),
    "zero-phase0.9": lambda losses: rule_curve(list(losses), 0.9, 3),
}
FEATURES: dict[str, Callable[[np.ndarray, list[float]], float | None]] = {
    "minimum": lambda lrs, y: suggest_minimum(list(lrs), y, skip_start=3, fraction=1.0),
    "steepest": lambda lrs, y: suggest_steepest(list(lrs), y, skip_start=3),
    "valley": lambda lrs, y: suggest_valley(list(lrs), y, skip_start=3),
    **{
        f"onset{rise:g}": (
            lambda lrs, y, rise=rise: suggest_onset(list(lrs), y, skip_start=3, rise=rise)
        )
        for rise in (0.02, 0.05, 0.1, 0.25)
    },
}
FRACTIONS = (1.0, 0.7, 1 / 2, 1 / 3, 1 / 5, 1 / 7, 1 / 10, 1 / 20, 1 / 30, 1 / 50)


def family(case: Case) -> str:
    """SGD or the Adam family (Adam's useful LRs lie lower than SGD's)."""
    return "sgd" if case.config.optimizer == "sgd" else "adam"


def candidate_lrs(sweeps_cache: Cache, case: Case, seed: int) -> dict[str, float | None]:
    """Every candidate (smoother, feature, fraction) read off one suggestion seed's sweeps.

    A curve that has not turned by LR 10 is replayed to the cached end (LR ~1e3),
    as an extended sweep would see it.
    """
    sweeps = sweeps_for(sweeps_cache, case, seed)
    out: dict[str, float | None] = {}
    # The online stop stays the causal EMA 0.98 at 5x the best loss, as it ships.
    curve = replay(sweeps, steps=DEFAULT_STEPS, beta=0.98, threshold=5.0)
    if (
        not curve.stopped
        and suggest_onset(
            list(curve.lrs), rule_curve(list(curve.losses), 0.9, 3), skip_start=3, rise=0.05
        )
        is None
    ):
        curve = replay(sweeps, steps=len(sweeps[0]["losses"]), beta=0.98, threshold=5.0)
    for smoother_name, smoother in SMOOTHERS.items():
        y = smoother(curve.losses)
        for feature_name, feature in FEATURES.items():
            value = feature(curve.lrs, y)
            if value is None and feature_name.startswith("onset") and curve.stopped:
                value = float(curve.lrs[-1])  # the stop rule saw the rise first
            for fraction in FRACTIONS:
                key = f"{smoother_name} {feature_name} x{fraction:.3g}"
                out[key] = None if value is None else value * fraction
    return out


REFERENCE_METHODS = (
    "torch-lr-finder",
    "fastai valley",
    "fastai minimum/10",
    "ema0.98 minimum x0.2",  # balance's default before this suite
    "zero-phase0.9 onset0.05 x0.5",  # the default chosen here: SGD ...
    "zero-phase0.9 onset0.05 x1",  # ... and Adam / AdamW
    "zero-phase0.9 minimum x0.7",
)


def dev_suggestions(sweeps: Cache) -> dict[str, dict[str, list[float | None]]]:
    """Development case -> candidate or foreign method -> one LR per suggestion seed."""
    suggested: dict[str, dict[str, list[float | None]]] = {}
    for case in cases_of("dev"):
        per_seed = [candidate_lrs(sweeps, case, seed) for seed in SUGGESTION_SEEDS]
        methods = {key: [lrs[key] for lrs in per_seed] for key in per_seed[0]}
        for seed in SUGGESTION_SEEDS:
            for key, lr in fastai_suggestions(sweeps.entries[f"{case.name}|fastai|{seed}"]).items():
                methods.setdefault(key, []).append(lr)
            methods.setdefault("torch-lr-finder", []).append(
                sweeps.entries[f"{case.name}|torch-lr-finder|{seed}"]["lr"]
            )
        suggested[case.name] = methods
    return suggested


def clipped(
    cache: Cache, suggested: dict[str, dict[str, list[float | None]]]
) -> dict[str, dict[str, list[float | None]]]:
    """The suggestions clipped to each reference's measured range (a provisional score)."""
    refs = references(cache, cases_of(None, suggested))
    return {
        name: {
            key: [
                None if lr is None else float(np.clip(lr, refs[name].lrs[0], refs[name].lrs[-1]))
                for lr in lrs
            ]
            for key, lrs in methods.items()
        }
        for name, methods in suggested.items()
    }


def run_tune(
    cache: Cache, sweeps: Cache, jobs: int, top: int = 10, train_missing: bool = True
) -> dict[str, Any]:
    """Rank every candidate on the development cases, per optimizer family.

    Candidates are ranked on clipped LRs first; the leaders' LRs outside the
    reference are then trained (4 seeds each) and the leaders scored exactly.
    """
    suggested = dev_suggestions(sweeps)
    provisional = score(cache, clipped(cache, suggested), boot=0)["cases"]
    leaders: dict[str, list[str]] = {}
    for fam in ("sgd", "adam"):
        names = [case.name for case in cases_of("dev") if family(case) == fam]
        mean = {
            key: float(np.mean([provisional[name][key]["regret"] for name in names]))
            for key in suggested[names[0]]
        }
        leaders[fam] = sorted(mean, key=mean.__getitem__)[:top]
    chosen = set(REFERENCE_METHODS).union(*leaders.values())
    subset = {name: {key: suggested[name][key] for key in chosen} for name in suggested}
    if train_missing:
        ensure_covered(cache, jobs, subset)
    else:
        subset = clipped(cache, subset)
    out: dict[str, Any] = {}
    for fam in ("sgd", "adam"):
        names = [case.name for case in cases_of("dev") if family(case) == fam]
        result = score(
            cache, {name: subset[name] for name in names}, boot=200 if train_missing else 0
        )
        out[fam] = result
        print(f"\n== {fam} development cases: {', '.join(names)}")
        ranked = sorted(result["methods"].items(), key=lambda item: item[1]["mean"])
        for key, summary in ranked:
            per_case = " ".join(f"{result['cases'][name][key]['regret']:5.2f}" for name in names)
            low, high = summary["mean_interval"] or (math.nan, math.nan)
            print(
                f"{key:34s} mean {summary['mean']:5.2f} [{low:.2f}, {high:.2f}] "
                f"worst {summary['worst']:5.2f}  | {per_case}"
            )
    return out


# -- evaluation: every method on the evaluation cases, in one run -----------------------


def balance_default(config: TrainConfig, seed: int) -> dict[str, Any]:
    """``choose_max_lr`` exactly as it ships (default ``RangeTestConfig``: curve, then probes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeTestWarning)
        try:
            result = choose_max_lr(config.model_copy(update={"seed": seed}), data=data_of(config))
        except ConfigError as error:
            return {"max_lr": None, "curve_max_lr": None, "error": str(error)}
    return {
        "max_lr": result.max_lr,
        "curve_max_lr": result.curve_max_lr,
        "probes": [asdict(probe) for probe in result.probes],
        "rule": result.rule,
        "suggestions": result.suggestions,
        "verdict": result.diagnostic.verdict,
        "diagnostic": result.diagnostic.explanation,
        "warnings": result.warnings,
        "steps": len(result.lrs),
        "probe_steps": sum(probe.steps for probe in result.probes),
    }


def fastai_of(config: TrainConfig, seed: int) -> dict[str, float]:
    """fastai's two suggestions on one fastai-default sweep at ``seed``."""
    return fastai_suggestions(sweep_of(config, FASTAI_SWEEP, seed))


def suggestions_of(
    cases: list[Case], jobs: int, tools: tuple[str, ...] = ("balance", "fastai", "torch-lr-finder")
) -> dict[str, dict[str, Any]]:
    """Every method's answers on ``cases``, computed now: case -> seed -> method -> LR."""
    tasks = []
    for case in cases:
        for seed in SUGGESTION_SEEDS:
            runners = {
                "balance": partial(balance_default, case.config, seed),
                "fastai": partial(fastai_of, case.config, seed),
                "torch-lr-finder": partial(lr_finder_of, case.config, seed),
            }
            tasks += [(case.name, seed, tool, runners[tool]) for tool in tools]
    print(f"running {len(tasks)} range tests ...", file=sys.stderr, flush=True)
    answers = Parallel(n_jobs=jobs)(delayed(task)() for *_, task in tasks)
    out: dict[str, dict[str, Any]] = {case.name: {} for case in cases}
    for (name, seed, tool, _), answer in zip(tasks, answers, strict=True):
        out[name].setdefault(seed, {})[tool] = answer
    return out


def methods_of(answers: dict[int, dict[str, Any]]) -> dict[str, list[float | None]]:
    """Method -> one LR per suggestion seed, from one case's answers."""
    methods: dict[str, list[float | None]] = {}
    for seed in SUGGESTION_SEEDS:
        found = answers[seed]
        methods.setdefault("balance default", []).append(found["balance"]["max_lr"])
        methods.setdefault("balance curve only", []).append(found["balance"].get("curve_max_lr"))
        for rule, lr in found["balance"].get("suggestions", {}).items():
            methods.setdefault(f"balance {rule}", []).append(lr)
        methods.setdefault("torch-lr-finder", []).append(found["torch-lr-finder"]["lr"])
        for key, lr in found["fastai"].items():
            methods.setdefault(key, []).append(lr)
    return methods


def _points(value: float) -> str:
    return f"{value:.2f}"


def markdown(result: dict[str, Any], split: str) -> str:
    """The regret table of one split: methods by mean regret, then per case."""
    lines = [
        f"**{split} cases** (regret in points of validation accuracy against the brute force; "
        "interval: 90% bootstrap over reference seeds)",
        "",
        "| method | mean regret | 90% interval | median | worst |",
        "|---|---|---|---|---|",
    ]
    for method, summary in sorted(result["methods"].items(), key=lambda item: item[1]["mean"]):
        low, high = summary["mean_interval"]
        lines.append(
            f"| {method} | {_points(summary['mean'])} | {_points(low)} .. {_points(high)} | "
            f"{_points(summary['median'])} | {_points(summary['worst'])} |"
        )
    lines += [
        "",
        "| case | best LR | best accuracy | default LRs (3 seeds) | spread | default regret | "
        "torch-lr-finder regret |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["cases"].items():
        default = row["balance default"]
        lrs = ", ".join("-" if lr is None else f"{lr:.3g}" for lr in default["lrs"])
        spread = "-" if default["lr_spread"] is None else f"{default['lr_spread']:.2f}x"
        lines.append(
            f"| {name} | {row['_best_lr']:.3g} | {row['_best']:.1f}% | {lrs} | {spread} | "
            f"{_points(default['regret'])} | "
            f"{_points(row['torch-lr-finder']['regret']) if 'torch-lr-finder' in row else '-'} |"
        )
    return "\n".join(lines)


def trained_markdown(trained: dict[str, Any]) -> str:
    """The default's regret per evaluation case when its LRs are trained, not interpolated."""
    low, high = trained["mean_interval"]
    lines = [
        "**The default's LRs trained** (4 seeds no probe used; against the same best "
        f"reference mean): mean {_points(trained['mean'])} (90% interval {_points(low)} .. "
        f"{_points(high)}), median {_points(trained['median'])}, worst "
        f"{_points(trained['worst'])}",
        "",
        "| case | regret, trained |",
        "|---|---|",
    ]
    lines += [f"| {name} | {_points(value)} |" for name, value in trained["cases"].items()]
    return "\n".join(lines)


def run_devcheck(cache: Cache, jobs: int) -> None:
    """balance's shipping default (``find_max_lr`` as it is now) on the development cases only."""
    cases = cases_of("dev")
    answers = suggestions_of(cases, jobs, tools=("balance",))
    suggested = {}
    for name, found in answers.items():
        suggested[name] = {
            "balance default": [found[s]["balance"]["max_lr"] for s in SUGGESTION_SEEDS]
        }
        for rule in found[0]["balance"].get("suggestions", {}):
            suggested[name][f"balance {rule}"] = [
                found[s]["balance"]["suggestions"][rule] for s in SUGGESTION_SEEDS
            ]
        for seed in SUGGESTION_SEEDS:
            shown = found[seed]["balance"]
            print(
                name,
                seed,
                shown.get("rule"),
                shown.get("verdict"),
                shown.get("warnings") or shown.get("error"),
            )
    ensure_covered(cache, jobs, suggested)
    result = score(cache, suggested, boot=200)
    print(markdown(result, "Development"))


def run_evaluate(cache: Cache, jobs: int, out_dir: Path, quick: bool) -> int:
    """Every method on every case (evaluation reported, development shown as in-sample)."""
    started = time.perf_counter()
    info = machine()
    cases = cases_of(None)
    answers = suggestions_of(cases, jobs)
    suggested = {name: methods_of(found) for name, found in answers.items()}
    ensure_covered(cache, jobs, suggested)
    by_split = {
        split: score(cache, {c.name: suggested[c.name] for c in cases_of(split)})
        for split in ("eval", "dev")
    }
    trained = score_trained(
        cache,
        Cache(cache.path.parent / "direct.json"),
        jobs,
        {c.name: suggested[c.name]["balance default"] for c in cases_of("eval")},
    )
    verdicts = verdict_rows(Cache(cache.path.parent / "verdict.json"), jobs, answers)
    table = (
        markdown(by_split["eval"], "Evaluation")
        + "\n\n"
        + trained_markdown(trained)
        + "\n\n"
        + markdown(by_split["dev"], "Development (in-sample: the default was chosen here)")
        + "\n\n"
        + verdict_markdown(verdicts)
    )
    print(table)
    ours, theirs = (
        by_split["eval"]["methods"]["balance default"],
        by_split["eval"]["methods"]["torch-lr-finder"],
    )
    spreads = [row["balance default"]["lr_spread"] for row in by_split["eval"]["cases"].values()]
    worst_spread = max((value for value in spreads if value is not None), default=math.inf)
    low, high = ours["mean_interval"]
    headlines = [
        headline(
            "mean regret of the default, evaluation cases",
            f"{ours['mean']:.2f} pts (90% interval {low:.2f} .. {high:.2f})",
            "<= 0.5 pts",
            ours["mean"] <= 0.5,
        ),
        headline(
            "median regret: default vs torch-lr-finder",
            f"{ours['median']:.2f} vs {theirs['median']:.2f} pts",
            "default <= torch-lr-finder",
            ours["median"] <= theirs["median"],
        ),
        headline(
            "worst regret of the default",
            f"{ours['worst']:.2f} pts",
            "<= 2 pts",
            ours["worst"] <= 2.0,
        ),
        headline(
            "the same, the default's LRs trained (4 fresh seeds): mean / median / worst",
            f"{trained['mean']:.2f} ({trained['mean_interval'][0]:.2f} .. "
            f"{trained['mean_interval'][1]:.2f}) / {trained['median']:.2f} / "
            f"{trained['worst']:.2f} pts",
            "<= 0.5 / - / <= 2 pts",
            trained["mean"] <= 0.5 and trained["worst"] <= 2.0,
        ),
        headline("default LR spread over 3 seeds (worst case)", f"{worst_spread:.2f}x", "", None),
    ]
    for split in ("dev", "eval"):
        rows = [row for row in verdicts.values() if row["split"] == split]
        agree = sum(row["agrees"] for row in rows)
        headline_of = "development (chosen there)" if split == "dev" else "evaluation"
        headlines.append(
            headline(
                f"super-convergence verdict agrees with the measured speed-up, {headline_of}",
                f"{agree} of {len(rows)} cases",
                "all",
                agree == len(rows),
            )
        )
    write_result(
        NAME,
        {
            "splits": by_split,
            "trained": trained,
            "verdicts": verdicts,
            "answers": answers,
            "markdown": table,
        },
        out_dir=out_dir,
        quick=quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    return 0


# -- the super-convergence verdict against measured speed-ups ------------------------------

VERDICT_CASES = {
    # development (the reading and its threshold are chosen here) ...
    "mnist1d-cnn1d-sgd-b100": "dev",
    "digits-mlp512-adam-b32": "dev",
    "tabular-mlp64-sgd-b32": "dev",
    "spirals-mlp64-sgd-b512": "dev",
    # ... and evaluation (reported only)
    "mnist1d-cnn1d-adam-b32": "eval",
    "digits-mlp64-sgd-b16": "eval",
    "tabular-mlp64-adamw-b16": "eval",
    "spirals-mlp64-adam-b128": "eval",
}
BASELINE_LRS = (1e-3, 3e-3, 1e-2)  # the baseline's constant Adam LR, tuned on validation
BASELINE_EPOCHS = 4  # times the case's 1cycle budget
LADDER = (1 / 4, 1 / 2, 1.0, 4 / 3)  # 1cycle budgets, shares of the case's epochs
SPEEDUP_LIKELY = 3.0


def baseline_config(case: Case) -> TrainConfig:
    """Adam at a constant LR, no weight decay, 4x the case's epochs: a tuned, long baseline."""
    return case.config.model_copy(
        update={
            "optimizer": "adam",
            "policy": "constant",
            "weight_decay": 0.0,
            "epochs": BASELINE_EPOCHS * case.config.epochs,
        }
    )


def ladder_epochs(case: Case) -> list[int]:
    """The 1cycle budgets in whole epochs, shortest first, without repeats."""
    return sorted({max(1, round(share * case.config.epochs)) for share in LADDER})


def measure_speedup(cache: Cache, jobs: int, case: Case, max_lrs: list[float]) -> dict[str, Any]:
    """Baseline steps over the shortest 1cycle budget (at the suggested LRs) that matches it."""
    base = baseline_config(case)
    tasks: dict[str, Callable[[], dict[str, Any]]] = {}
    for lr in BASELINE_LRS:
        for seed in SUGGESTION_SEEDS:
            tasks[f"{case.name}|baseline|{_lr_key(lr)}|{seed}"] = partial(train_at, base, lr, seed)
    for epochs in ladder_epochs(case):
        short = case.config.model_copy(update={"epochs": epochs})
        for seed, lr in zip(SUGGESTION_SEEDS, max_lrs, strict=True):
            key = f"{case.name}|1cycle|{epochs}|{_lr_key(lr)}|{seed}"
            tasks[key] = partial(train_at, short, lr, seed)
    todo = cache.missing(tasks)
    if todo:
        cache.update(
            dict(zip(todo, Parallel(n_jobs=jobs)(delayed(tasks[k])() for k in todo), strict=True))
        )
    runs = cache.entries
    baseline = {
        lr: float(
            np.mean(
                [
                    runs[f"{case.name}|baseline|{_lr_key(lr)}|{s}"]["val_accuracy"]
                    for s in SUGGESTION_SEEDS
                ]
            )
        )
        for lr in BASELINE_LRS
    }
    best_lr = max(baseline, key=baseline.__getitem__)
    target = baseline[best_lr]
    baseline_steps = runs[f"{case.name}|baseline|{_lr_key(best_lr)}|0"]["steps"]
    ladder = []
    for epochs in ladder_epochs(case):
        accuracy = float(
            np.mean(
                [
                    runs[f"{case.name}|1cycle|{epochs}|{_lr_key(lr)}|{seed}"]["val_accuracy"]
                    for seed, lr in zip(SUGGESTION_SEEDS, max_lrs, strict=True)
                ]
            )
        )
        steps = runs[f"{case.name}|1cycle|{epochs}|{_lr_key(max_lrs[0])}|0"]["steps"]
        ladder.append({"epochs": epochs, "steps": steps, "val_accuracy": accuracy})
    reached = [rung for rung in ladder if rung["val_accuracy"] >= target]
    speedup = baseline_steps / reached[0]["steps"] if reached else None
    longest = ladder[-1]["steps"]
    return {
        "baseline_lr": best_lr,
        "baseline_val_accuracy": target,
        "baseline_steps": baseline_steps,
        "ladder": ladder,
        "speedup": speedup,
        # without a rung that reaches the target, the speed-up is below this bound
        "speedup_below": None if reached else baseline_steps / longest,
        "likely": speedup is not None and speedup >= SPEEDUP_LIKELY,
    }


def plateau_readings(
    val_lrs: np.ndarray, accuracies: np.ndarray, tolerance: float = 0.02
) -> dict[str, float]:
    """Shape figures of an accuracy-vs-LR curve: where it is within ``tolerance`` of its peak.

    ``start``/``end`` are the first and last LR of the contiguous stretch around the
    peak that stays within tolerance; ``width`` is its length in decades.
    """
    keep = np.isfinite(accuracies)
    x, acc = val_lrs[keep], accuracies[keep]
    peak = int(np.argmax(acc))
    level = acc[peak] - tolerance
    start = peak
    while start > 0 and acc[start - 1] >= level:
        start -= 1
    end = peak
    while end + 1 < len(acc) and acc[end + 1] >= level:
        end += 1
    return {
        "peak": float(acc[peak]),
        "start": float(x[start]),
        "end": float(x[end]),
        "width": float(math.log10(x[end] / x[start])),
    }


def verdict_rows(
    cache: Cache, jobs: int, answers: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each verdict case's verdicts (3 seeds) beside the speed-up measured at the same LRs."""
    rows = {}
    for name, split in VERDICT_CASES.items():
        found = [answers[name][seed]["balance"] for seed in SUGGESTION_SEEDS]
        measured = measure_speedup(cache, jobs, CASES[name], [f["max_lr"] for f in found])
        verdicts = [f.get("verdict") for f in found]
        majority = max(set(verdicts), key=verdicts.count)
        expected = "likely" if measured["likely"] else "unlikely"
        rows[name] = {
            "split": split,
            "verdicts": verdicts,
            "verdict": majority,
            "diagnostics": [f.get("diagnostic") for f in found],
            "agrees": majority == expected,
            **measured,
        }
    return rows


def verdict_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """The agreement table: case, verdict, measured speed-up."""
    lines = [
        "**Super-convergence verdict against the measured speed-up** (1cycle at the default "
        "LR vs Adam at a tuned constant LR for 4x the steps; likely = at least "
        f"{SPEEDUP_LIKELY:g}x fewer steps to the baseline's final validation accuracy)",
        "",
        "| case | split | verdict (3 seeds) | measured speed-up | agrees |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        shown = (
            f"{row['speedup']:.1f}x"
            if row["speedup"] is not None
            else f"below {row['speedup_below']:.1f}x "
            f"(never reached {row['baseline_val_accuracy']:.3f})"
        )
        lines.append(
            f"| {name} | {row['split']} | {', '.join(map(str, row['verdicts']))} | {shown} | "
            f"{'yes' if row['agrees'] else '**no**'} |"
        )
    return "\n".join(lines)


def run_verdict(cache: Cache, jobs: int) -> None:
    """Print the agreement table at the shipping default (the reading is chosen on dev rows)."""
    cases = [CASES[name] for name in VERDICT_CASES]
    answers = suggestions_of(cases, jobs, tools=("balance",))
    print(verdict_markdown(verdict_rows(cache, jobs, answers)))


# -- tuning the probes on the development cases, from the brute force -------------------

# (first-round step in decades, first-round probes, refinement rounds)
PROBE_SETTINGS = [
    (step, count, refine) for step in (0.5, 0.75) for count in (3, 5, 7) for refine in (0, 1)
]


def replayed_probe_regret(
    runs: dict[float, list[float]], centres: list[float], step: float, count: int, refine: int = 0
) -> float:
    """Regret of probes replayed from the brute force, mean over the suggestion seeds.

    A probe at LR x with seed s is the reference run of seed s at the grid LR nearest
    x (the grid is a quarter decade apart, so a refinement below that is not
    replayed faithfully); the chosen LR is scored on the mean of the other seeds, so
    a lucky probe seed earns nothing. As in ``choose_max_lr``, each refinement round
    adds two probes at half the last step either side of the best so far.
    """
    lrs = np.array(sorted(runs))

    def on_grid(lr: float) -> float:
        return float(lrs[int(np.argmin(abs(np.log10(lrs) - math.log10(lr))))])

    lost = []
    for seed, centre in zip(SUGGESTION_SEEDS, centres, strict=True):
        others = [s for s in range(len(REFERENCE_SEEDS)) if s != seed]
        mean = {lr: float(np.mean([runs[lr][s] for s in others])) for lr in lrs}
        tried = {on_grid(lr) for lr in probe_lrs(centre, count, step)}
        chosen, half = min(tried, key=lambda lr: (-runs[lr][seed], lr)), step
        for _ in range(refine):
            half /= 2
            tried |= {on_grid(lr) for lr in probe_lrs(chosen, 2, 2 * half)}
            chosen = min(tried, key=lambda lr: (-runs[lr][seed], lr))
        lost.append(100.0 * (max(mean.values()) - mean[chosen]))
    return float(np.mean(lost))


def run_probe_tuning(cache: Cache, sweeps: Cache) -> None:
    """Probe spacing, number and refinement against the curve alone, development cases only."""
    rows: dict[str, list[float]] = {}
    for case in cases_of("dev"):
        runs = reference_curve(cache, case)
        key = "zero-phase0.9 onset0.05 " + ("x0.5" if family(case) == "sgd" else "x1")
        centres = [candidate_lrs(sweeps, case, seed)[key] or 1e-3 for seed in SUGGESTION_SEEDS]
        rows.setdefault("curve only", []).append(replayed_probe_regret(runs, centres, 0.5, 1))
        for step, count, refine in PROBE_SETTINGS:
            label = f"{count} probes {step:g} decades apart" + (
                f", then {2 * refine} at half the step" if refine else ""
            )
            rows.setdefault(label, []).append(
                replayed_probe_regret(runs, centres, step, count, refine)
            )
    for label, values in rows.items():
        print(
            f"{label:50s} mean {np.mean(values):5.2f} median {np.median(values):5.2f} "
            f"worst {max(values):5.2f}"
        )


def time_cases(cases: list[Case]) -> None:
    """One run per case at its grid's middle LR: seconds and steps, to size the budgets."""
    for case in cases:
        lr = grid_of(case)[GRID_POINTS // 2]
        data_of(case.config)
        started = time.perf_counter()
        result = train_at(case.config, lr, 0)
        print(
            f"{case.name:30s} {time.perf_counter() - started:6.2f} s  {result['steps']:4d} steps  "
            f"lr {lr:.3g}  val {result['val_accuracy']:.3f}",
            flush=True,
        )


def use_quick_suite(out_dir: Path) -> Path:
    """``--quick``: two one-epoch digits cases, one seed, 3 LRs, caches under ``out_dir``.

    Only to see that every part runs; its numbers mean nothing.
    """
    global CASES, REFERENCE_SEEDS, SUGGESTION_SEEDS, SWEEP_SEEDS, GRID_POINTS, VERDICT_CASES
    quick = [
        _case("dev", "digits", "mlp64", "sgd", 64, 1),
        _case("eval", "digits", "mlp64", "adam", 64, 1),
    ]
    CASES = {case.name: case for case in quick}
    VERDICT_CASES = {case.name: case.split for case in quick}
    REFERENCE_SEEDS, SUGGESTION_SEEDS, SWEEP_SEEDS, GRID_POINTS = (0,), (0,), (0, 1, 2), 3
    return out_dir / "lr_suite"


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument(
        "part",
        nargs="?",
        default="evaluate",
        choices=[
            "time",
            "reference",
            "sweeps",
            "tune",
            "probes",
            "devcheck",
            "evaluate",
            "verdict",
        ],
    )
    arguments.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    arguments.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    arguments.add_argument("--no-train", action="store_true", help="score on cached runs only")
    args = arguments.parse_args(argv)
    torch.set_num_threads(1)
    cache_dir = use_quick_suite(args.out_dir) if args.quick else CACHE
    jobs = 1 if args.quick else args.jobs
    cases = cases_of(None, args.cases)
    reference, sweeps = Cache(cache_dir / "reference.json"), Cache(cache_dir / "sweeps.json")
    if args.part == "time":
        time_cases(cases)
    elif args.part == "reference":
        run_reference(cases, reference, jobs)
    elif args.part == "sweeps":
        run_sweeps(cases, sweeps, jobs)
    elif args.part == "tune":
        run_tune(reference, sweeps, jobs, train_missing=not args.no_train)
    elif args.part == "probes":
        run_probe_tuning(reference, sweeps)
    elif args.part == "devcheck":
        run_devcheck(reference, jobs)
    elif args.part == "verdict":
        run_verdict(Cache(cache_dir / "verdict.json"), jobs)
    else:
        if args.quick:  # the brute force first: the committed one covers the real cases only
            run_reference(cases, reference, jobs)
        return run_evaluate(reference, jobs, args.out_dir, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
