"""Faults a sweep must survive: SIGTERM and Ctrl-C mid-sweep, a local worker killed, and a
storage nobody answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from study_files import (
    BALANCE,
    ROOT,
    cells_by_state,
    load,
    subprocess_env,
    tiny_values,
    write_study,
)
from typer.testing import CliRunner

from balance.cells import cell_key
from balance.cli import app
from balance.config import StudyConfig, build

STOP_BOUND_S = 30  # a stopped sweep must exit within this


def completed(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    """The completed trials, or none while the study does not exist yet."""
    if not Path(url).exists():
        return []
    try:
        return load(name, url).get_trials(states=(TrialState.COMPLETE,))
    except KeyError:
        return []


def wait_until(condition, what: str, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` (observable state, not a clock) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


STOPPED = tiny_values(
    "stopped",
    workers=2,
    train={"epochs": 8, "batch_size": 32},  # about a second a trial
    search={"weight_decay": [0.0, 1e-4, 1e-3, 1e-2], "dropout": [0.0, 0.1, 0.2]},
)
CELLS = 12


def start_and_stop(command: list[str], how: str, url: str, after: int) -> dict[int, float]:
    """Run `balance sweep` (2 local workers) until ``after`` trials are complete, stop it.

    Checks the stop: exit 130 within the bound, one message and no traceback, no
    worker process left, no trial left running, every interrupted cell queued again.
    Returns the completed trials (number: value).
    """
    sweep = subprocess.Popen(
        command,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
    )
    wait_until(lambda: len(completed("stopped", url)) >= after, f"{after} completed trials")
    workers = [pid for pid in children(sweep.pid) if b"spawn_main" in cmdline(pid)]
    assert len(workers) == 2
    kept = {t.number: t.value for t in completed("stopped", url)}
    if how == "sigterm":
        sweep.send_signal(signal.SIGTERM)  # the main process only, as `kill` or systemd does
    else:
        os.killpg(sweep.pid, signal.SIGINT)  # every process of the job, as the terminal does
    started = time.monotonic()
    _, stderr = sweep.communicate(timeout=STOP_BOUND_S)
    assert time.monotonic() - started < STOP_BOUND_S
    assert sweep.returncode == 130, stderr
    assert stderr.splitlines()[0].startswith("interrupted: completed trials of 'stopped' are kept")
    assert "Traceback" not in stderr
    assert all(gone(pid) for pid in workers), "a worker process outlived the sweep"

    study = load("stopped", url)
    assert not study.get_trials(states=(TrialState.RUNNING,)), "a trial was left running"
    done = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert kept.items() <= done.items() and len(done) < CELLS
    # each trial stopped mid-way is failed and its cell queued again
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    requeued = {t.user_attrs.get("requeued_from") for t in study.get_trials()}
    assert {t.number for t in interrupted} <= requeued
    return done


def test_sigterm_and_ctrl_c_stop_the_sweep_keeping_its_trials_then_report_and_resume(
    tmp_path: Path,
) -> None:
    study_file = write_study(tmp_path / "stopped.toml", STOPPED)
    url = str(tmp_path / "stopped" / "study.journal")
    command = [*BALANCE, "sweep", str(study_file), "--root", str(tmp_path), "-q"]

    first = start_and_stop(command, "sigterm", url, after=2)
    report = CliRunner().invoke(app, ["report", str(study_file), "--root", str(tmp_path)])
    assert report.exit_code == 0, report.output
    assert f"{len(first)} complete" in (tmp_path / "stopped" / "index.html").read_text()

    second = start_and_stop(command, "ctrl-c", url, after=len(first) + 2)  # resumed, stopped
    assert first.items() <= second.items()

    resumed = CliRunner().invoke(app, [*command[3:], "--workers", "1"])  # in this process
    assert resumed.exit_code == 0, resumed.output
    study = load("stopped", url)
    config = build(StudyConfig, STOPPED)
    expected = sorted(cell_key(cell) for cell in config.search.grid_cells())
    assert cells_by_state(study, TrialState.COMPLETE) == expected  # each cell exactly once
    assert second.items() <= {t.number: t.value for t in study.trials}.items()


def test_a_dead_local_worker_is_one_line_and_exit_3_and_a_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = tiny_values("dying", workers=2, train={"model": "tests.plugins.crash_model:model"})
    study_file = write_study(tmp_path / "dying.toml", values)
    url = str(tmp_path / "dying" / "study.journal")
    command = [*BALANCE, "sweep", str(study_file), "--root", str(tmp_path), "-q"]
    (tmp_path / "builds").mkdir()
    # Build 1 is the preflight check in the main process; build 2 is the first model a
    # worker trains, and it SIGKILLs that worker after 3 steps.
    crash = {"BALANCE_TEST_CRASH_DIR": str(tmp_path / "builds")}
    died = subprocess.run(
        command,
        env=subprocess_env(**crash, BALANCE_TEST_CRASH_AT="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == 3, died.stderr[-3000:]
    assert "Traceback" not in died.stderr
    (line,) = [line for line in died.stderr.splitlines() if line.startswith("error:")]
    assert "died with exit code -9" in line and "re-run to resume" in line
    study = load("dying", url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3  # the other worker's
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1  # the dead one's

    monkeypatch.setenv("BALANCE_TEST_CRASH_DIR", crash["BALANCE_TEST_CRASH_DIR"])
    monkeypatch.syspath_prepend(str(ROOT))  # the plug-in model, imported in this process
    resumed = CliRunner().invoke(app, [*command[3:], "--workers", "1"])  # in this process
    assert resumed.exit_code == 0, resumed.output
    config = build(StudyConfig, values)
    expected = sorted(cell_key(cell) for cell in config.search.grid_cells())
    assert cells_by_state(load("dying", url), TrialState.COMPLETE) == expected


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung database server."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize("command", ["sweep", "worker"])
@pytest.mark.parametrize("server", ["closed port", "silent server"])
def test_unreachable_storage_is_one_line_and_exit_2_within_the_timeout(
    command: str,
    server: str,
    tmp_path: Path,
    silent_server: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BALANCE_CONNECT_TIMEOUT_S", "2")  # 10 s unless set
    port = silent_server if server == "silent server" else closed_port()
    url = f"postgresql://balance:secret@127.0.0.1:{port}/balance"
    study_file = write_study(tmp_path / "study.toml", tiny_values("unreachable"))
    started = time.monotonic()
    result = CliRunner().invoke(app, [command, str(study_file), "--storage", url])
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"error: storage: cannot reach postgresql://balance:***@127.0.0.1:{port}"
    )
    assert "secret" not in result.output
    if server == "silent server":
        assert "timeout expired" in line and 2 <= elapsed < 10
    else:
        assert "refused" in line and elapsed < 10
