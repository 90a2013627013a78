"""Faults a sweep must survive: SIGTERM and Ctrl-C mid-sweep, a local worker killed, and a
storage nobody answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
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
    subprocess_env,
    tiny_values,
    wait_until,
    write_study,
)
from typer.testing import CliRunner

from balance.cells import cell_key
from balance.cli import app
from balance.config import StudyConfig, build
from balance.pipeline import preflight, prepare

# A guard against a hung sweep, well above the workers' 30 s grace (STOP_GRACE_S): whether
# the stop was clean is judged by what it left, since a worker killed at the end of the
# grace leaves its trial running and its cell unqueued, which the checks below catch.
STOP_BOUND_S = 120


def completed(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    """The completed trials, or none while the study does not exist yet."""
    if not Path(url).exists():
        return []
    try:
        return load(name, url).get_trials(states=(TrialState.COMPLETE,))
    except KeyError:
        return []


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
    # a fraction of a second a trial: the hold model, not the length, keeps cells queued
    train={"epochs": 3, "batch_size": 32, "model": "tests.plugins.hold_model:model"},
    range_test=TRIALS_ONLY,
    search={"weight_decay": [0.0, 1e-4, 1e-3, 1e-2], "dropout": [0.0, 0.1, 0.2]},
)
CELLS = 12


def start_and_stop(
    command: list[str], how: str, url: str, after: int, hold: Path
) -> dict[int, float]:
    """Run `balance sweep` (2 local workers) until ``after`` trials are complete, hold both
    workers mid-trial (``hold`` is the hold model's folder), then stop it.

    Checks the stop: exit 130, one message and no traceback, no worker process left, no
    trial left running, both interrupted cells queued again. Returns the completed
    trials (number: value).
    """
    hold.mkdir()
    sweep = subprocess.Popen(
        command,
        env=subprocess_env(BALANCE_TEST_HOLD_DIR=str(hold)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
    )
    wait_until(lambda: len(completed("stopped", url)) >= after, f"{after} completed trials")
    workers = [pid for pid in children(sweep.pid) if b"spawn_main" in cmdline(pid)]
    assert len(workers) == 2
    (hold / "hold").touch()
    wait_until(lambda: len(list(hold.glob("held-*"))) == 2, "both workers held mid-trial")
    kept = {t.number: t.value for t in completed("stopped", url)}
    failed_before = [t.number for t in load("stopped", url).get_trials(states=(TrialState.FAIL,))]
    if how == "sigterm":
        sweep.send_signal(signal.SIGTERM)  # the main process only, as `kill` or systemd does
    else:
        os.killpg(sweep.pid, signal.SIGINT)  # every process of the job, as the terminal does
    _, stderr = sweep.communicate(timeout=STOP_BOUND_S)
    (hold / "hold").unlink()
    assert sweep.returncode == 130, stderr
    assert stderr.splitlines()[0].startswith("interrupted: completed trials of 'stopped' are kept")
    assert "Traceback" not in stderr
    assert all(gone(pid) for pid in workers), "a worker process outlived the sweep"

    study = load("stopped", url)
    assert not study.get_trials(states=(TrialState.RUNNING,)), "a trial was left running"
    done = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert kept.items() <= done.items() and len(done) < CELLS
    # both trials stopped mid-way are failed and their cells queued again
    stopped_now = {t.number for t in study.get_trials(states=(TrialState.FAIL,))} - set(
        failed_before
    )
    requeued = {t.user_attrs.get("requeued_from") for t in study.get_trials()}
    assert len(stopped_now) == 2 and stopped_now <= requeued
    return done


def test_sigterm_and_ctrl_c_stop_the_sweep_keeping_its_trials_then_report_and_resume(
    tmp_path: Path,
) -> None:
    study_file = write_study(tmp_path / "stopped.toml", STOPPED)
    url = str(tmp_path / "stopped" / "study.journal")
    command = [*BALANCE, "sweep", str(study_file), "--root", str(tmp_path), "-q"]

    first = start_and_stop(command, "sigterm", url, after=2, hold=tmp_path / "hold-1")
    report = CliRunner().invoke(app, ["report", str(study_file), "--root", str(tmp_path)])
    assert report.exit_code == 0, report.output
    assert f"{len(first)} complete" in (tmp_path / "stopped" / "index.html").read_text()

    second = start_and_stop(  # resumed, then stopped
        command, "ctrl-c", url, after=len(first) + 2, hold=tmp_path / "hold-2"
    )
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
    values = tiny_values(
        "dying",
        workers=2,
        train={"model": "tests.plugins.crash_model:model"},
        range_test=TRIALS_ONLY,
    )
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


class SilentServer:
    """A port that accepts TCP connections and never answers: a hung database server.

    It records how long each client held its connection before giving up, so a test can
    check the connect timeout itself rather than a wall clock that includes start-up.
    """

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = int(self.socket.getsockname()[1])
        self.held_s: list[float] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.socket.accept()
            except OSError:  # closed by the test
                return
            accepted = time.monotonic()
            with client:
                while client.recv(1024):  # the client's start-up packet; then EOF
                    pass
            self.held_s.append(time.monotonic() - accepted)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.socket.close()


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
    silent_server: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BALANCE_CONNECT_TIMEOUT_S", "2")  # 10 s unless set
    port = silent_server.port if server == "silent server" else closed_port()
    url = f"postgresql://balance:secret@127.0.0.1:{port}/balance"
    study_file = write_study(tmp_path / "study.toml", tiny_values("unreachable"))
    result = CliRunner().invoke(app, [command, str(study_file), "--storage", url])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"error: storage: cannot reach postgresql://balance:***@127.0.0.1:{port}"
    )
    assert "secret" not in result.output
    if server == "silent server":
        assert "timeout expired" in line
        wait_until(lambda: bool(silent_server.held_s), "the client to hang up")
        # The client gave up after the 2 s asked for, not the 10 s default. The server
        # accepts a moment after the client's clock starts, so it sees a little less.
        assert all(1 < held < 6 for held in silent_server.held_s), silent_server.held_s
    else:
        assert "refused" in line


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_worker_on_the_journal_stops_cleanly_and_its_cell_is_trained_on_resume(
    how: str, tmp_path: Path
) -> None:
    values = tiny_values(
        "joined", train={"model": "tests.plugins.hold_model:model"}, range_test=TRIALS_ONLY
    )
    study_file = write_study(tmp_path / "joined.toml", values)
    url = str(tmp_path / "joined" / "study.journal")
    config = build(StudyConfig, values)
    prepare(config, url, preflight(config))  # what `balance sweep` does before its workers
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold").touch()
    worker = subprocess.Popen(
        [*BALANCE, "worker", str(study_file), "--storage", url, "--threads", "1"],
        env=subprocess_env(BALANCE_TEST_HOLD_DIR=str(hold)),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_until(lambda: bool(list(hold.glob("held-*"))), "the worker held mid-trial")
    if how == "sigterm":
        worker.send_signal(signal.SIGTERM)
    else:
        os.killpg(worker.pid, signal.SIGINT)
    _, stderr = worker.communicate(timeout=STOP_BOUND_S)
    (hold / "hold").unlink()

    assert worker.returncode == 130, stderr
    assert stderr.splitlines()[0].startswith("interrupted: completed trials of 'joined'")
    assert "Traceback" not in stderr
    study = load("joined", url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    (stopped,) = study.get_trials(states=(TrialState.FAIL,))
    assert stopped.number in {t.user_attrs.get("requeued_from") for t in study.get_trials()}

    resumed = CliRunner().invoke(app, ["worker", str(study_file), "--storage", url])
    assert resumed.exit_code == 0, resumed.output
    expected = sorted(cell_key(cell) for cell in config.search.grid_cells())
    assert cells_by_state(load("joined", url), TrialState.COMPLETE) == expected
