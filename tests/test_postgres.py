"""Studies on a real PostgreSQL server: many `balance worker` processes, a killed worker, load.

The server comes from the ``postgres_server`` fixture (a throwaway server, or
``BALANCE_TEST_POSTGRES_URL``); every test gets a database of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from study_files import (
    BALANCE,
    ROOT,
    TRIALS_ONLY,
    cells_by_state,
    load,
    record_of,
    subprocess_env,
    tiny_values,
    wait_until,
    write_study,
)

from balance.analysis import audit, trials_frame
from balance.cells import cell_key
from balance.config import StudyConfig, build
from balance.pipeline import preflight, prepare
from balance.study import run_worker

pytestmark = pytest.mark.postgres

WORKER_TIMEOUT_S = 180


def start_workers(study_file: Path, url: str, count: int, **env: str) -> list[subprocess.Popen]:
    command = [*BALANCE, "worker", str(study_file), "--storage", url, "--threads", "1"]
    return [
        subprocess.Popen(command, env=subprocess_env(**env), stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]


def finish(workers: list[subprocess.Popen]) -> list[int]:
    for worker in workers:
        worker.wait(timeout=WORKER_TIMEOUT_S)
    return [worker.returncode for worker in workers]


def test_three_workers_train_every_cell_once_as_one_worker_does(
    postgres_url: str, tmp_path: Path
) -> None:
    # 4 x 3 cells; weight decay 1e4 diverges at once, so 3 cells end as diverged failures.
    search = {"weight_decay": [0.0, 1e-4, 1e-3, 1e4], "dropout": [0.0, 0.2, 0.4]}
    model = "tests.plugins.rendezvous_model:model"  # an MLP; workers wait for each other
    values = tiny_values("three", search=search, train={"model": model}, range_test=TRIALS_ONLY)
    study_file = write_study(tmp_path / "three.toml", values)
    three = build(StudyConfig, values)
    alone = build(StudyConfig, {**values, "name": "alone"})
    for config in (three, alone):
        prepare(config, postgres_url, preflight(config))

    workers = start_workers(
        study_file,
        postgres_url,
        3,
        BALANCE_TEST_RENDEZVOUS_DIR=str(tmp_path),
        BALANCE_TEST_RENDEZVOUS_COUNT="3",
    )
    run_worker(alone, postgres_url, threads=1)  # no rendezvous here: a plain MLP
    assert finish(workers) == [0, 0, 0], [w.stderr.read()[-2000:] for w in workers if w.stderr]

    study, single = load("three", postgres_url), load("alone", postgres_url)
    cells = sorted(cell_key(cell) for cell in three.search.grid_cells())
    diverging = sorted(key for key in cells if key.startswith("weight_decay=10000.0|"))
    for each in (study, single):
        assert cells_by_state(each, TrialState.COMPLETE) == sorted(set(cells) - set(diverging))
        assert cells_by_state(each, TrialState.FAIL) == diverging
        assert not each.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert len(pids) == 3, "the cells should be shared among the worker processes"
    # the same cells give the same accuracies, whichever process trained them
    assert value_by_cell(study) == value_by_cell(single)

    for trial in study.get_trials(states=(TrialState.FAIL,)):
        reason = trial.user_attrs["diverged"]  # recorded with its step and LR
        assert reason["step"] >= 0 and reason["lr"] > 0


def value_by_cell(study: optuna.Study) -> dict[str, float | None]:
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL))
    return {t.user_attrs["cell"]: t.value for t in trials if not t.user_attrs.get("surplus")}


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried_by_the_others(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = tiny_values(
        "killed",
        train={"model": "tests.plugins.crash_model:model"},
        range_test=TRIALS_ONLY,
        search={"weight_decay": [0.0, 1e-4, 1e-3], "dropout": [0.0, 0.2]},
    )
    study_file = write_study(tmp_path / "killed.toml", values)
    config = build(StudyConfig, values)
    monkeypatch.syspath_prepend(str(ROOT))  # preflight builds the plug-in model here too
    monkeypatch.setenv("BALANCE_TEST_CRASH_DIR", str(tmp_path))
    prepare(config, postgres_url, preflight(config))
    # 1 s heartbeat, 3 s grace: a dead worker's trial goes stale in seconds, not a minute.
    fast = {"BALANCE_HEARTBEAT_S": "1"}

    # The first model this worker builds SIGKILLs its process after 3 training steps.
    (tmp_path / "doomed").mkdir()
    doomed = start_workers(
        study_file,
        postgres_url,
        1,
        **fast,
        BALANCE_TEST_CRASH_DIR=str(tmp_path / "doomed"),
        BALANCE_TEST_CRASH_AT="1",
    )
    assert finish(doomed) == [-9]
    study = load("killed", postgres_url)
    (left_running,) = study.get_trials(states=(TrialState.RUNNING,))
    assert left_running.user_attrs["worker"]["pid"] == doomed[0].pid

    (tmp_path / "others").mkdir()
    others = start_workers(
        study_file, postgres_url, 2, **fast, BALANCE_TEST_CRASH_DIR=str(tmp_path / "others")
    )  # BALANCE_TEST_CRASH_AT unset: these never crash
    assert finish(others) == [0, 0], [w.stderr.read()[-2000:] for w in others if w.stderr]

    study = load("killed", postgres_url)
    dead = study.trials[left_running.number]
    assert dead.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["cell"] == dead.user_attrs["cell"]
    expected = sorted(cell_key(cell) for cell in config.search.grid_cells())
    assert cells_by_state(study, TrialState.COMPLETE) == expected
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    found = audit(trials_frame(record_of(study, config)), config)
    assert found["missing"] == [] and found["duplicated"] == []


@pytest.mark.slow
def test_four_workers_two_hundred_trials_each_lose_and_repeat_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "postgres_load.json"
    script = ROOT / "benchmarks" / "postgres_load.py"
    command = [sys.executable, str(script), "--url", postgres_url, "--out-dir", str(tmp_path)]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["workers"] == 4 and result["trials_per_worker"] == 200
    assert result["completed"] == 800
    assert result["lost"] == 0 and result["repeated"] == 0
    assert result["trials_per_second"] > 0 and 0 < result["storage_share"] <= 1


def test_a_sweep_on_postgresql_stops_resumes_and_reports(postgres_url: str, tmp_path: Path) -> None:
    import signal

    from typer.testing import CliRunner

    from balance.cli import app

    values = tiny_values(
        "pg-resume", train={"model": "tests.plugins.hold_model:model"}, range_test=TRIALS_ONLY
    )
    study_file = write_study(tmp_path / "pg-resume.toml", values)
    hold = tmp_path / "hold"
    hold.mkdir()
    command = [*BALANCE, "sweep", str(study_file), "--storage", postgres_url]
    command += ["--root", str(tmp_path), "--workers", "1", "-q"]
    sweep = subprocess.Popen(
        command,
        env=subprocess_env(BALANCE_TEST_HOLD_DIR=str(hold)),
        stderr=subprocess.PIPE,
        text=True,
    )
    (hold / "hold").touch()  # stage 1 needs no training step: the first trial is held
    wait_until(lambda: bool(list(hold.glob("held-*"))), "the sweep held in its first trial")
    sweep.send_signal(signal.SIGTERM)
    _, stderr = sweep.communicate(timeout=WORKER_TIMEOUT_S)
    (hold / "hold").unlink()
    assert sweep.returncode == 130, stderr
    study = load("pg-resume", postgres_url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    (stopped,) = study.get_trials(states=(TrialState.FAIL,))
    assert stopped.number in {t.user_attrs.get("requeued_from") for t in study.get_trials()}

    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    config = build(StudyConfig, values)
    expected = sorted(cell_key(cell) for cell in config.search.grid_cells())
    assert cells_by_state(load("pg-resume", postgres_url), TrialState.COMPLETE) == expected

    page = tmp_path / "pg-resume" / "index.html"
    page.unlink()
    report = CliRunner().invoke(
        app, ["report", str(study_file), "--storage", postgres_url, "--root", str(tmp_path)]
    )
    assert report.exit_code == 0, report.output
    text = page.read_text()
    assert "4 complete" in text and "postgresql://" in text


def test_racing_rounds_run_on_postgresql_like_on_a_journal(
    postgres_url: str, tmp_path: Path
) -> None:
    from balance.cells import repeated_runs
    from balance.pipeline import sweep

    values = tiny_values(
        "pg-race",
        seeds=2,
        race=True,
        max_seeds=4,
        search={"weight_decay": [0.0, 1e-3, 0.3], "dropout": [0.0]},
    )
    config = build(StudyConfig, values)
    result = sweep(config, storage=postgres_url, root=tmp_path)
    record = record_of(load("pg-race", postgres_url), config)
    raced = [t for t in record.trials if t.race_round is not None]
    assert raced and {t.race_round for t in raced} == {1}
    assert not repeated_runs(record.trials)
    assert result.summary["audit"]["raced_trials"] == len(raced)
    assert result.summary["audit"]["duplicated"] == []
    # Weight decay 0.3 ruins a one-epoch run: that cell falls behind and never races.
    seeds = {cell.params["weight_decay"]: cell.seeds for cell in record.cells}
    assert seeds[0.3] == 2 and max(seeds.values()) == 4


def test_an_lr_multiplier_grid_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    from balance.pipeline import sweep

    values = tiny_values(
        "pg-lr",
        search={"weight_decay": [0.0, 1e-3], "dropout": [0.0], "lr_multiplier": [0.5, 1.0]},
    )
    config = build(StudyConfig, values)
    result = sweep(config, storage=postgres_url, root=tmp_path)
    record = record_of(load("pg-lr", postgres_url), config)
    complete = [t for t in record.trials if t.state == "complete"]
    assert len(complete) == 4 and result.summary["audit"]["duplicated"] == []
    for trial in complete:
        assert trial.max_lr == pytest.approx(0.1 * trial.params["lr_multiplier"])
    levels = result.summary["lr_tradeoff"]["best_weight_decay"]
    assert [level["lr_multiplier"] for level in levels] == [0.5, 1.0]
