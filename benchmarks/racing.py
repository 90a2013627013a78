"""Racing seeds: training steps to the full grid's decision, as a ratio of the full grid's steps.

The full grid is the default study (``studies/mnist1d-cnn.toml``) trained with
``MAX_SEEDS`` seeds a cell (stage 1 and 2 of ``balance sweep`` in a temporary
folder, 2 workers, no test evaluation). Its decision is the set of cells
indistinguishable from the best on every seed (``balance.analysis.analyse_noise``'s
rule). Racing is then replayed on the same runs: it starts from the study's
``seeds`` (2) a cell and each round reveals the next ``seeds`` seeds of the
cells ``balance.analysis.race_round`` keeps, until the best stands alone or every
survivor has ``MAX_SEEDS``. A cell trained with seed s gives the same run whether
a racing round or the full grid asks for it (seeded runs are deterministic on one
device), so the replay is what ``race = true`` would train; the real racing
pipeline (workers, storages, resume) is tested in tests/test_study.py.

Figures: racing's steps over the full grid's (the ratio; lower is better), whether
the decision matched (the same best cell, and every cell the full grid keeps as
indistinguishable raced to the end: none left behind with fewer seeds), the
rounds, and how far the final record's indistinguishable set agrees with the full
grid's (cells at the edge may differ: the other cells' seed counts shape the noise
model). ``--quick`` runs a digits/mlp
stand-in with 4 seeds a cell.

Run (about 25 minutes on 2 cores):
    python benchmarks/racing.py
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from _common import headline, machine, parser, write_result

from balance.analysis import cell_runs, race_round
from balance.analysis._comparisons import CellRuns
from balance.analysis._noise import best_set
from balance.config import StudyConfig, build
from balance.pipeline import preflight
from balance.record import StudyRecord, load_record
from balance.storage import open_storage
from balance.study import create_or_resume, enqueue_missing_cells, fix_max_lrs, run_workers
from balance.study_file import load_study_file

NAME = "racing"
ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "mnist1d-cnn.toml"
MAX_SEEDS = 6


def quick_study() -> StudyConfig:
    """A digits/mlp stand-in for --quick: 3 x 2 cells, 1 epoch, a fixed max LR."""
    values: dict[str, Any] = {
        "name": "racing-quick",
        "sampler": "grid",
        "seeds": 2,
        "workers": 1,
        "train": {"data": "digits", "model": "mlp", "epochs": 1, "batch_size": 64,
                  "max_lr": 0.1, "threads": 1},
        "search": {"weight_decay": [0.0, 1e-3, 0.3], "dropout": [0.0, 0.2]},
    }  # fmt: skip
    config: StudyConfig = build(StudyConfig, values)
    return config


def full_grid(config: StudyConfig, root: Path) -> StudyRecord:
    """The grid at ``config.seeds`` seeds a cell: stage 1 and 2, no test evaluation."""
    url = str(root / config.name / "study.journal")
    (root / config.name).mkdir(parents=True, exist_ok=True)
    data = preflight(config)
    study = create_or_resume(config, url)
    fix_max_lrs(study, config, data, threads=config.train.threads)
    enqueue_missing_cells(study, config)
    run_workers(config, url, config.workers)
    stored = optuna.load_study(study_name=config.name, storage=open_storage(url))
    return load_record(stored, config, storage="benchmark")


def steps_of(record: StudyRecord) -> dict[tuple[str, int], int]:
    """Optimizer steps of every counted run, by (cell, seed)."""
    return {
        (trial.cell, run.seed): run.steps for trial in record.trials for run in trial.counted_runs
    }


def kept(cells: list[CellRuns]) -> list[str]:
    """Keys of the cells indistinguishable from the best (the first), best first."""
    _, _, separated = best_set(cells, np.random.default_rng(0))
    return [cell.key for cell, worse in zip(cells, separated, strict=True) if not worse]


def ordered(cells: list[CellRuns]) -> list[CellRuns]:
    """Best first, by the ranking rule (as ``cell_runs`` orders a record's cells)."""
    from balance.cells import rank

    return sorted(cells, key=lambda cell: rank(-cell.mean, len(cell.seeds), cell.params))


def replay(
    full: list[CellRuns], start: int, step: int, max_seeds: int
) -> tuple[list[CellRuns], int]:
    """Racing on the full grid's runs: each cell's first ``start`` seeds, then rounds."""
    shown = {cell.key: start for cell in full}
    by_key = {cell.key: cell for cell in full}
    rounds = 0

    def visible() -> list[CellRuns]:
        return ordered(
            [
                replace(by_key[key], seeds=by_key[key].seeds[:count],
                        correct=by_key[key].correct[:count])
                for key, count in shown.items()
            ]
        )  # fmt: skip

    while True:
        more = race_round(visible(), step=step, max_seeds=max_seeds)
        if not more:
            return visible(), rounds
        for key, count in more.items():
            shown[key] += count
        rounds += 1


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__.splitlines()[0])
    args = arguments.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="balance.range_test")
    base = quick_study() if args.quick else load_study_file(STUDY)
    max_seeds = 4 if args.quick else MAX_SEEDS
    config = base.model_copy(update={"name": f"{base.name}-full", "seeds": max_seeds})
    with tempfile.TemporaryDirectory() as folder:
        record = full_grid(config, Path(folder))
    full = cell_runs(record)
    if full is None:
        raise SystemExit("racing: the full grid kept no per-example results")
    steps = steps_of(record)
    full_kept = kept(full)
    raced, rounds = replay(full, base.seeds, base.seeds, max_seeds)
    race_kept = kept(raced)
    racing_steps = sum(steps[(cell.key, seed)] for cell in raced for seed in cell.seeds)
    full_steps = sum(steps.values())
    ratio = racing_steps / full_steps
    same_best = race_kept[0] == full_kept[0]
    seeds_of = {cell.key: len(cell.seeds) for cell in raced}
    # Left behind: a cell the full grid keeps that racing stopped giving seeds to.
    dropped = sorted(key for key in full_kept if seeds_of[key] < max_seeds)
    matched = same_best and not dropped
    seeds = seeds_of
    headlines = [
        headline(
            f"racing from {base.seeds} to at most {max_seeds} seeds a cell: training steps to "
            f"the decision / the full grid's at {max_seeds} seeds ({full_steps:,} steps)",
            f"{ratio:.2f} ({rounds} rounds; {sum(seeds.values())} of {max_seeds * len(full)} runs)",
            "< 1, decision matched",
            ratio < 1 and matched,
        ),
        headline(
            "racing's decision against the full grid's: the same best cell, and every cell "
            "the full grid keeps raced to the end",
            f"{'matched' if matched else 'differs'} (best {'same' if same_best else 'differs'}; "
            f"full grid keeps {len(full_kept)} of {len(full)} cells, racing's final record "
            f"{len(race_kept)}, {len(set(full_kept) & set(race_kept))} in both; "
            f"left behind {len(dropped)})",
        ),
    ]
    payload = {
        "study": str(STUDY.relative_to(ROOT)) if not args.quick else "quick",
        "max_seeds": max_seeds,
        "start_seeds": base.seeds,
        "ratio": ratio,
        "rounds": rounds,
        "racing_steps": racing_steps,
        "full_steps": full_steps,
        "matched": matched,
        "same_best": same_best,
        "full_kept": full_kept,
        "racing_kept": race_kept,
        "dropped": dropped,
        "seeds_per_cell": seeds,
    }
    path = write_result(
        NAME,
        payload,
        out_dir=args.out_dir,
        quick=args.quick,
        started=started,
        machine_info=info,
        headlines=headlines,
    )
    decision = "matched" if matched else "differs"
    print(f"{NAME}: ratio {ratio:.2f}, {rounds} rounds, decision {decision}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
