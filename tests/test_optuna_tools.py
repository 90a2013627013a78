"""The stored study is readable by Optuna's own tools: the ``optuna`` CLI and optuna-dashboard.

Both read a copy of the committed example study (the default study's journal file).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

from optuna_dashboard import wsgi

from balance.storage import open_storage

EXAMPLE = Path(__file__).parents[1] / "reports" / "example" / "mnist1d-cnn" / "study.journal"


def copy_of_example(tmp_path: Path) -> Path:
    journal = tmp_path / "study.journal"
    shutil.copyfile(EXAMPLE, journal)
    return journal


def test_optuna_cli_lists_every_trial_of_a_balance_study(tmp_path: Path) -> None:
    journal = copy_of_example(tmp_path)
    optuna_cli = Path(sys.executable).parent / "optuna"
    command = [str(optuna_cli), "trials", "--study-name", "mnist1d-cnn", "--storage"]
    command += [str(journal), "--storage-class", "JournalFileBackend", "-f", "json"]

    listed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)

    trials = json.loads(listed.stdout)
    assert len(trials) == 30
    assert {trial["state"] for trial in trials} == {"COMPLETE"}
    assert {"weight_decay", "dropout", "batch_size"} <= set(trials[0]["params"])


def test_optuna_dashboard_serves_the_study_and_its_trials(tmp_path: Path) -> None:
    app = wsgi(open_storage(str(copy_of_example(tmp_path))))

    def get(path: str) -> object:
        environ: dict[str, object] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        status: list[str] = []
        body = app(environ, lambda code, headers, *rest: status.append(code))
        assert status == ["200 OK"], (path, status)
        return json.load(io.BytesIO(b"".join(body)))

    studies = get("/api/studies")
    assert isinstance(studies, dict)
    (summary,) = studies["study_summaries"]
    assert summary["study_name"] == "mnist1d-cnn"
    detail = get(f"/api/studies/{summary['study_id']}")
    assert isinstance(detail, dict)
    assert len(detail["trials"]) == 30
    assert {param["name"] for param in detail["trials"][0]["params"]} == {
        "weight_decay",
        "dropout",
        "batch_size",
    }
