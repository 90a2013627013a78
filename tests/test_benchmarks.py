"""The benchmark scripts run (``--quick``) and write the JSON and table the README relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
MACHINE_KEYS = {"cores", "torch_threads", "torch", "cpu", "load_average_at_start"}
SCRIPTS = {
    # script -> keys its JSON must hold besides the common ones
    "loop_overhead": {"cases", "repeats", "target"},
    "lr_finder_speed": {"cases", "repeats", "sweep"},
    "lr_suite": {"splits", "verdicts", "answers", "markdown"},
    "super_convergence": {"cases"},
    "worker_scaling": {"cases", "repeats", "target"},
    "search_efficiency": {"grid", "runs", "ratio", "ratios"},
    "end_to_end": {"wall_s", "not_training_share", "parts_s", "runs"},
    "postgres_load": {"balance_workers", "lost", "repeated", "server"},
    "racing": {"ratio", "rounds", "matched", "full_kept", "racing_kept", "dropped"},
    "lr_axis": {"studies"},
    "streaming_data": {"ratio", "cases", "repeats"},
    "packed_trials": {"ratio", "cases", "repeats"},
    "packed_study": {"ratio", "ratio_variant", "pack", "repeats", "variants"},
}


def test_every_benchmark_script_is_checked_here() -> None:
    scripts = {path.stem for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_")}
    assert scripts == set(SCRIPTS)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


FIRST_COMMIT = git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]


def test_results_table_lists_every_json_in_the_folder(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCHMARKS))
    row = _common.headline("ratio", "1.00", ">= 0.97", True)
    _common.write_result(
        "ours",
        {"extra": 1},
        out_dir=tmp_path,
        quick=True,
        started=0.0,
        machine_info={"cores": 2, "torch_threads": 1, "load_average_at_start": [1.0, 0.5, 0.2]},
        headlines=[row],
    )
    (tmp_path / "theirs.json").write_text(json.dumps({"rows_per_second": 12.5}))
    old = {"benchmark": "older", "headline": [row], "code": {"commit": FIRST_COMMIT}}
    (tmp_path / "older.json").write_text(json.dumps(old))
    _common.write_readme(tmp_path)
    table = (tmp_path / "README.md").read_text()
    ours = json.loads((tmp_path / "ours.json").read_text())
    assert ours["code"]["commit"] == git("rev-parse", "HEAD")
    assert f"| ours (quick) | ratio | 1.00 | >= 0.97 | yes | {ours['code']['commit'][:8]}" in table
    assert "| older | ratio | 1.00 | >= 0.97 | yes | **stale** (" in table  # the code moved on
    assert "rows_per_second=12.5" in table and "**unknown commit**" in table
    assert "1.0 / 0.5 / 0.2" in table


@pytest.mark.parametrize(
    "name",
    [
        # postgres_load starts a throwaway server from the installed binaries, as the
        # PostgreSQL tests do
        pytest.param(name, marks=pytest.mark.postgres) if name == "postgres_load" else name
        for name in sorted(SCRIPTS)
    ],
)
def test_benchmark_quick_run_writes_its_json(name: str, tmp_path: Path) -> None:
    """Every benchmark runs, tiny (``--quick``), in the default tests: one that no longer
    runs fails CI instead of waiting for the next ``nox -s bench``."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert {"benchmark", "quick", "machine", "headline", "seconds"} <= set(result)
    assert SCRIPTS[name] <= set(result)
    assert set(result["machine"]) >= MACHINE_KEYS
    assert result["quick"] is True
    assert result["headline"]
    for row in result["headline"]:
        assert {"measure", "value", "target", "met"} <= set(row)
    assert f"| {name} (quick) |" in (tmp_path / "README.md").read_text()
