"""Optuna studies on real storage with real (tiny) training: coverage, resume, workers, pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from study_files import TRIALS_ONLY, record_of, study_config, tiny_values
from study_files import load_study as load

from balance.analysis import audit, cell_runs, race_round, runs_frame, trials_frame
from balance.cells import cell_key, cell_results, repeated_runs
from balance.config import ConfigError, StudyConfig, base_setting
from balance.pipeline import preflight, sweep
from balance.study import _learning_rate as learning_rate_module
from balance.study import evaluate_on_test, queue_race_round

TESTS = Path(__file__).parent


def tiny_study(name: str, **overrides: Any) -> StudyConfig:
    """A digits/mlp grid of 2 x 2 x 1 cells, one epoch per run: a trial takes well under 1 s."""
    return study_config(tiny_values(name), **overrides)


def trained_cells(study: optuna.Study) -> list[str]:
    return [t.user_attrs["cell"] for t in study.get_trials(states=(TrialState.COMPLETE,))]


def test_grid_trains_every_cell_exactly_once(tmp_path: Path) -> None:
    config = tiny_study("grid-once", search={"batch_size": [32, 64]})
    result = sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    expected = sorted(cell_key(cell) for cell in config.search.grid_cells())
    assert sorted(trained_cells(study)) == expected
    assert result.summary["audit"]["missing"] == []
    assert result.summary["audit"]["duplicated"] == []
    assert (tmp_path / "grid-once" / "trials.parquet").stat().st_size > 0
    frame = json.loads((tmp_path / "grid-once" / "summary.json").read_text())
    # every axis, the unsearched LR multiplier at its base value (the range test's LR)
    assert frame["best"]["params"].keys() == {
        "weight_decay",
        "dropout",
        "batch_size",
        "lr_multiplier",
    }
    assert frame["best"]["params"]["lr_multiplier"] == 1.0
    interval = frame["best"]["val_accuracy_interval"]  # seeds and validation examples
    assert interval["low"] <= frame["best"]["val_accuracy"] <= interval["high"]
    assert interval["high"] - interval["low"] > 0 and interval["level"] == 0.9
    assert frame["test"]["chosen"]["test_accuracy"] > 0.5
    # Every cell carries its interval; the best leads the cells that could be the best.
    assert len(frame["cells"]) == 8
    assert all(c["low"] <= c["val_accuracy"] <= c["high"] for c in frame["cells"])
    assert frame["indistinguishable"][0] == frame["best"]["params"]
    assert set(frame["axes"]) == {"weight_decay", "dropout", "batch_size"}
    assert all(0 < axis["p_value"] <= 1 for axis in frame["axes"].values())
    # One seed a cell: the seed noise is unknown, so no cell is called worse than the
    # best (the split's noise alone would separate them on a seed's luck), and nothing
    # can be planned from it.
    assert len(frame["indistinguishable"]) == 8
    assert frame["noise"]["critical_value"] is None
    assert frame["what_it_would_take"]["detectable"] is None
    assert frame["test_difference"] is None  # the study file names no baseline


def test_rerun_resumes_without_repeating_cells_or_the_range_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_study("resume", train={"max_lr": None})
    sweep(config, root=tmp_path)
    first = load(config, tmp_path)
    tests_before = first.user_attrs["range_tests"]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("stage 1 ran again on resume")

    monkeypatch.setattr(learning_rate_module, "choose_max_lr", refuse)
    sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    assert len(study.trials) == 4
    assert study.user_attrs["range_tests"] == tests_before
    assert sorted(trained_cells(study)) == sorted(set(trained_cells(study)))


def test_stored_study_with_another_space_is_refused(tmp_path: Path) -> None:
    sweep(tiny_study("space"), root=tmp_path)
    changed = tiny_study("space", search={"dropout": [0.0, 0.3]})
    with pytest.raises(ConfigError, match="different search"):
        sweep(changed, root=tmp_path)
    assert len(load(changed, tmp_path).trials) == 4


def test_diverging_cell_is_failed_with_its_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # weight decay 1e4 at lr 0.1 multiplies weights by about -1000 per step: non-finite at once.
    config = tiny_study("diverge", search={"weight_decay": [0.0, 1e4], "dropout": [0.0]})
    result = sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1
    reason = failed[0].user_attrs["diverged"]
    assert reason["step"] >= 0 and reason["lr"] > 0
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    assert result.summary["diverged"] == 1
    assert result.summary["audit"]["missing"] == []


def test_pruned_trials_are_recorded_as_pruned_with_their_partial_curve(tmp_path: Path) -> None:
    config = tiny_study(
        "prune",
        sampler="random",
        pruner="median",
        n_trials=12,
        train={"epochs": 4},
        search={"weight_decay": [0.0], "dropout": {"low": 0.0, "high": 0.95}},
    )
    result = sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "expected the median pruner to stop at least one high-dropout trial"
    for trial in pruned:
        run = trial.user_attrs["runs"][0]
        # the partial curve ends at the epoch the pruner stopped, its last report
        assert run["curve"]["epoch"] == sorted(trial.intermediate_values)
    frame = trials_frame(record_of(study, config))
    assert (frame["state"] == "pruned").sum() == len(pruned)
    assert result.summary["trials"]["pruned"] == len(pruned)


def test_two_local_workers_share_one_study_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_study(
        "two-workers",
        workers=2,
        train={"model": "tests.plugins.rendezvous_model:model"},
        range_test=TRIALS_ONLY,
        search={"weight_decay": [0.0, 1e-4, 1e-3], "dropout": [0.0, 0.2]},
    )
    # each worker's first step waits for the other's: neither can empty the queue alone
    monkeypatch.setenv("BALANCE_TEST_RENDEZVOUS_DIR", str(tmp_path))
    monkeypatch.setenv("BALANCE_TEST_RENDEZVOUS_COUNT", "2")
    result = sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(pids) == 2, "both worker processes should have trained cells"
    assert sorted(trained_cells(study)) == sorted(cell_key(c) for c in config.search.grid_cells())
    assert result.summary["audit"]["duplicated"] == []


SWEEP_SCRIPT = """
import sys
from dataclasses import replace
from pathlib import Path
from balance.config import StudyConfig
from balance.pipeline import sweep
config = StudyConfig.model_validate_json(Path(sys.argv[1]).read_text())
sweep(config, root=Path(sys.argv[2]))
"""


def test_a_diverged_trial_is_logged_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    config = tiny_study("loud", search={"weight_decay": [1e4, 0.0], "dropout": [0.0]})
    config_file = tmp_path / "study.json"
    config_file.write_text(config.model_dump_json())
    command = [sys.executable, "-c", SWEEP_SCRIPT, str(config_file), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if "because of the following" in line]
    assert "Trial 0 failed" in line and "diverged at step" in line  # Optuna's warning, kept
    assert "Traceback" not in done.stderr  # an outcome of the search, not a bug


def test_worker_killed_mid_trial_is_resumed_without_loss_or_repeats(tmp_path: Path) -> None:
    config = tiny_study(
        "killed", train={"model": "tests.plugins.crash_model:model"}, range_test=TRIALS_ONLY
    )
    config_file = tmp_path / "study.json"
    config_file.write_text(config.model_dump_json())
    env = {
        **os.environ,
        "BALANCE_TEST_CRASH_DIR": str(tmp_path),
        "BALANCE_TEST_CRASH_AT": "4",  # build 1 is the preflight check, 2-3 the first trials
        "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    command = [sys.executable, "-c", SWEEP_SCRIPT, str(config_file), str(tmp_path)]
    killed = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    study = load(config, tmp_path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1

    finished = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    study = load(config, tmp_path)
    dead = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["fail_reason"] for t in dead] == ["worker died"]
    assert sorted(trained_cells(study)) == sorted(cell_key(c) for c in config.search.grid_cells())
    frame = trials_frame(record_of(study, config))
    report = audit(frame, config)
    assert report["missing"] == [] and report["duplicated"] == []


def test_test_split_runs_shared_by_two_processes_equal_the_runs_in_one(tmp_path: Path) -> None:
    config = tiny_study(
        "test-split",
        seeds=2,
        search={"weight_decay": [0.0], "dropout": [0.0, 0.2]},
        baseline={"optimizer": "adam", "policy": "constant", "max_lr": 0.01},
    )
    sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    data = preflight(config)
    one = evaluate_on_test(study, config, data, threads=1, workers=1)
    study.set_user_attr("final", None)  # forget it, so it is computed again

    two = evaluate_on_test(study, config, data, threads=1, workers=2)

    assert two == one
    assert [run.seed for run in two.chosen.runs] == [0, 1]
    assert two.baseline is not None and len(two.baseline.runs) == 2


def test_a_one_cell_grid_runs_its_cell_once(tmp_path: Path) -> None:
    # Optuna's GridSampler.after_trial read a grid_id that queued trials never get.
    config = tiny_study("one-cell", search={"weight_decay": [1e-3], "dropout": [0.0]})
    result = sweep(config, root=tmp_path)
    assert result.summary["trials"] == {"complete": 1}
    assert trained_cells(load(config, tmp_path)) == ["weight_decay=0.001|dropout=0.0"]


def test_a_cell_proposed_again_trains_new_seeds_and_repeats_count_once(tmp_path: Path) -> None:
    # A one-cell space: every trial a sampler proposes is the same cell again.
    config = tiny_study(
        "again",
        sampler="random",
        n_trials=3,
        seeds=2,
        search={"weight_decay": [0.0], "dropout": [0.1]},
    )
    sweep(config, root=tmp_path)
    record = record_of(load(config, tmp_path), config)
    seeds = [[run.seed for run in trial.runs] for trial in record.trials]
    assert seeds == [[0, 1], [2, 3], [4, 5]]  # no seed trained twice
    (cell,) = record.cells
    assert cell.seeds == 6 and cell.trials == (0, 1, 2)

    # A study stored before seeds were fresh repeated a cell's seeds bit for bit: the
    # repeat is the same run, so it counts once, in the cell and in the runs frame.
    first, second, third = record.trials
    repeated = [first, replace(second, runs=first.runs), third]
    assert repeated_runs(repeated) == {(1, 0), (1, 1)}
    (cell,) = cell_results(repeated, base_setting(config.train))
    assert cell.seeds == 4 and cell.trials == (0, 2)
    runs = runs_frame(replace(record, trials=tuple(repeated)))
    assert runs["counted"].tolist() == [True, True, False, False, True, True]


def test_racing_gives_seeds_only_to_cells_not_separated_from_the_best(tmp_path: Path) -> None:
    # Weight decay 0.3 ruins a one-epoch run: those cells fall behind in round one and
    # never race; the others stay within noise of the best and race to max_seeds.
    config = tiny_study(
        "race",
        seeds=2,
        race=True,
        max_seeds=6,
        search={"weight_decay": [0.0, 1e-3, 0.3], "dropout": [0.0, 0.2]},
    )
    result = sweep(config, root=tmp_path)
    record = record_of(load(config, tmp_path), config)
    rounds = sorted({t.race_round for t in record.trials if t.race_round is not None})
    assert rounds and rounds == list(range(1, len(rounds) + 1))
    for number in rounds:
        # The round is what race_round decides on the trials finished before it.
        before = replace(
            record,
            trials=tuple(t for t in record.trials if (t.race_round or 0) < number),
        )
        cells = cell_runs(before)
        assert cells is not None
        queued = {t.cell: t.seed_count for t in record.trials if t.race_round == number}
        assert queued == race_round(cells, step=2, max_seeds=6)
    seeds = {cell.params["weight_decay"]: cell.seeds for cell in record.cells}
    assert max(seeds.values()) <= 6
    assert all(cell.seeds == 2 for cell in record.cells if cell.params["weight_decay"] == 0.3)
    assert not repeated_runs(record.trials)  # every round trained fresh seeds
    audit = result.summary["audit"]
    assert audit["duplicated"] == [] and audit["missing"] == []
    assert audit["raced_trials"] == sum(t.race_round is not None for t in record.trials)
    assert audit["race_rounds"] == len(rounds)
    summary_seeds = sorted(cell["seeds"] for cell in result.summary["cells"])
    assert summary_seeds == sorted(cell.seeds for cell in record.cells)

    # A re-run resumes a decided race: nothing more is trained.
    before = len(record.trials)
    sweep(config, root=tmp_path)
    assert len(load(config, tmp_path).trials) == before


def test_a_queued_racing_round_is_trained_by_the_next_run(tmp_path: Path) -> None:
    config = tiny_study(
        "race-resume",
        seeds=2,
        race=True,
        max_seeds=4,
        workers=2,  # the queued round goes to two worker processes
        search={"weight_decay": [0.0, 1e-3], "dropout": [0.0]},
    )
    grid_only = config.model_copy(update={"race": False, "max_seeds": None, "workers": 1})
    sweep(grid_only, root=tmp_path)  # the grid, as a sweep cut short after it would leave
    study = load(config, tmp_path)
    assert queue_race_round(study, config) == 2  # two cells within noise get 2 seeds more
    assert queue_race_round(study, config) == 0  # nothing new while a round waits
    sweep(config, root=tmp_path)
    record = record_of(load(config, tmp_path), config)
    assert sorted(cell.seeds for cell in record.cells) == [4, 4]
    assert [t.race_round for t in record.trials] == [None, None, 1, 1]


def test_racing_needs_a_grid_two_seeds_and_room_above_them() -> None:
    for bad in ({"seeds": 1, "max_seeds": 4}, {"seeds": 2, "max_seeds": 2}, {"seeds": 2}):
        with pytest.raises(ConfigError, match="race = true needs"):
            tiny_study("race-bad", race=True, **bad)
