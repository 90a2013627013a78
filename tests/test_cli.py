"""The ``balance`` command line end to end, on the digits data set and a small MLP."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from balance.cli import app
from balance.config import RangeTestConfig, TrainConfig

TINY = ["--data", "digits", "--model", "mlp", "--threads", "1"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def console_script() -> str:
    """The installed ``balance`` script beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "balance"
    found = str(beside) if beside.exists() else shutil.which("balance")
    assert found, "the balance console script is not installed (pip install -e .)"
    return found


def test_train_writes_curves_and_prints_the_epoch_table(tmp_path: Path) -> None:
    result = invoke("train", *TINY, "--max-lr", "0.1", "--epochs", "2", "--out", str(tmp_path))

    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "val_accuracy" in line)
    assert header.split() == [
        "epoch",
        "step",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "momentum",
    ]
    assert "test_accuracy:" in result.stdout and "samples/s:" in result.stdout
    saved = json.loads((tmp_path / "train.json").read_text())
    assert [epoch["epoch"] for epoch in saved["epochs"]] == [1, 2]
    assert len(saved["lr_trace"]) == len(saved["momentum_trace"]) == saved["steps"] > 0
    assert saved["test_accuracy"] > 0.5
    assert saved["config"]["max_lr"] == 0.1 and saved["max_lr_source"] == "given"


def test_flags_left_out_keep_the_config_defaults(tmp_path: Path) -> None:
    result = invoke(
        "train", *TINY, "--max-lr", "0.1", "--epochs", "1", "--no-augment", "--out", str(tmp_path)
    )

    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "train.json").read_text())
    expected = TrainConfig(data="digits", model="mlp", threads=1, max_lr=0.1, epochs=1)
    assert saved["config"] == expected.model_dump(mode="json")


def test_lr_find_prints_every_suggestion_and_writes_png_and_json(tmp_path: Path) -> None:
    result = invoke(
        "lr-find", *TINY, "--num-steps", "30", "--repeats", "2", "--epochs", "1", "--probes", "1",
        "--out", str(tmp_path),
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    for rule in ("onset", "steepest", "valley", "minimum", "accuracy"):
        assert rule in result.stdout
    assert "* onset" in result.stdout  # the default rule is marked
    assert "onset and minimum lie" in result.stdout  # their spread, checked at 10x
    assert "mean of 2 sweeps" in result.stdout
    assert "max_lr:" in result.stdout and "super-convergence:" in result.stdout
    png = (tmp_path / "range_test.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    saved = json.loads((tmp_path / "range_test.json").read_text())
    assert set(saved["suggestions"]) == {"onset", "steepest", "valley", "minimum", "accuracy"}
    assert saved["range_config"]["num_steps"] == 30 and saved["max_lr"] > 0
    assert saved["repeats"] == 2
    # One one-epoch probe at the curve's answer, then one refinement round (default):
    # 0.375 decades either side. The best on validation is max_lr.
    assert result.stdout.count(" lr ") == 3 and "(rule onset, then probes)" in result.stdout
    probes = saved["probes"]
    assert len(probes) == 3 and all(probe["steps"] == 13 for probe in probes)  # 1,293 / 100
    assert probes[0]["lr"] == saved["curve_max_lr"]
    assert [p["lr"] for p in probes[1:]] == pytest.approx(
        [saved["curve_max_lr"] * 10**-0.375, saved["curve_max_lr"] * 10**0.375]
    )
    best = max(probes, key=lambda probe: (probe["val_accuracy"] or -1.0, -probe["lr"]))
    assert saved["max_lr"] == best["lr"]


def test_train_without_max_lr_takes_it_from_the_range_test(tmp_path: Path) -> None:
    result = invoke(
        "train",
        *TINY,
        "--epochs",
        "1",
        "--num-steps",
        "20",
        "--rule",
        "steepest",
        "--probes",
        "0",  # the curve's answer itself (lr-find's test checks the probes)
        "--out",
        str(tmp_path),
    )

    assert result.exit_code == 0, result.output
    assert "max_lr: not given" in result.stdout
    found = json.loads((tmp_path / "range_test.json").read_text())
    saved = json.loads((tmp_path / "train.json").read_text())
    # not the default rule, so a --rule that was ignored would fail
    assert found["suggestions"]["steepest"] != found["suggestions"]["minimum"]
    assert saved["config"]["max_lr"] == found["max_lr"] == found["suggestions"]["steepest"]
    assert saved["max_lr_source"] == "range test, rule steepest"


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--dropout", "1.5", "dropout"),
        ("--model", "nope", "model"),
        ("--batch-size", "0", "batch_size"),
        ("--weight-decay", "-1", "weight_decay"),
        ("--optimizer", "rmsprop", "optimizer"),
        ("--num-steps", "2", "num_steps"),
    ],
)
@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_a_bad_value_is_one_line_naming_the_field_and_exit_2(
    tmp_path: Path, command: str, flag: str, value: str, field: str
) -> None:
    result = invoke(command, *TINY, flag, value, "--out", str(tmp_path))

    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {field}: ") and "(got " in line
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir())


def test_every_problem_gets_its_own_line() -> None:
    result = invoke(
        "lr-find", "--dropout", "1.5", "--batch-size", "0", "--start-lr", "5", "--end-lr", "1"
    )

    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["dropout", "batch_size", "config"]
    assert "end_lr must exceed start_lr" in lines[2]


def test_a_problem_found_while_loading_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = invoke(
        "train", *TINY, "--max-lr", "0.1", "--batch-size", "100000", "--out", str(tmp_path)
    )

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: batch_size: 100000 is larger than the training split (1293 examples)"
    ]


def test_a_value_that_does_not_parse_is_a_usage_error_exit_2() -> None:
    result = invoke("train", "--epochs", "two")

    assert result.exit_code == 2
    assert "--epochs" in result.output and "Traceback" not in result.output


def test_divergence_is_one_line_naming_the_step_and_exit_1(tmp_path: Path) -> None:
    result = invoke("train", *TINY, "--max-lr", "1e6", "--epochs", "1", "--out", str(tmp_path))

    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    saved = json.loads((tmp_path / "train.json").read_text())
    step = saved["diverged"]["step"]
    assert line.startswith("diverged:") and f"at step {step} " in line
    assert saved["diverged"]["loss"] is None  # NaN written as strict-JSON null


def help_flags(command: str) -> set[str]:
    """Every flag ``balance COMMAND --help`` lists: the options that begin a help row."""
    text = CliRunner().invoke(app, [command, "--help"], terminal_width=200).stdout
    rows = [line for line in text.splitlines() if re.match(r"^  (-\w, )?--", line)]
    return {flag for row in rows for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", row)}


def flags_of(*models: type, skip: tuple[str, ...] = ()) -> set[str]:
    """``--name`` per field (``--no-name`` too for a switch), as the config models name them."""
    flags = set()
    for model in models:
        for name, field in model.model_fields.items():
            if name in skip:
                continue
            flag = "--" + name.replace("_", "-")
            flags |= {flag, f"--no-{flag[2:]}"} if field.annotation is bool else {flag}
    return flags


def test_every_config_field_has_a_flag_of_the_same_name() -> None:
    # Exact sets, so --data cannot pass for --data-path, nor --mode for --model.
    own = {"--out", "--help"}
    assert help_flags("train") == flags_of(TrainConfig, RangeTestConfig) | own | {"--quiet"}
    # lr-find takes the schedule and budget too: its probes train the run they describe.
    assert help_flags("lr-find") == flags_of(TrainConfig, RangeTestConfig, skip=("max_lr",)) | own


def test_console_script_runs_in_a_real_process() -> None:
    env = {**os.environ, "COLUMNS": "100"}
    shown = subprocess.run(
        [console_script(), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    bad = subprocess.run(
        [console_script(), "train", "--weight-decay", "-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert shown.returncode == 0 and "lr-find" in shown.stdout and "train" in shown.stdout
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "error: weight_decay: Input should be greater than or equal to 0 (got -1.0)"
    )


# --- study commands ----------------------------------------------------------------------

TINY_STUDY = """
name = "cli-tiny"
sampler = "grid"
seeds = 1
[train]
data = "digits"
model = "mlp"
epochs = 1
batch_size = 64
threads = 1
[range_test]
num_steps = 20
[search]
weight_decay = [0.0, 1e-3]
dropout = [0.0, 0.2]
"""


def write_study(folder: Path, text: str = TINY_STUDY) -> Path:
    path = folder / "study.toml"
    path.write_text(text)
    return path


def test_validate_accepts_a_good_study_and_names_its_size(tmp_path: Path) -> None:
    result = invoke("validate", str(write_study(tmp_path)))

    assert result.exit_code == 0, result.output
    assert "ok (cli-tiny: 4 grid cells x 1 seeds)" in result.stdout


def test_validate_prints_every_problem_on_its_own_line_and_exits_2(tmp_path: Path) -> None:
    bad = TINY_STUDY.replace('sampler = "grid"', 'sampler = "annealing"').replace(
        "dropout = [0.0, 0.2]", "dropout = [0.0, 1.5]"
    )
    result = invoke("validate", str(write_study(tmp_path, bad)))

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert any(line.startswith("error: sampler") for line in lines)
    assert any(line.startswith("error: search.dropout") for line in lines)


def train_two_cells(study_file: Path, root: Path) -> dict[int, float]:
    """Leave the study of ``study_file`` half done: stage 1, the queue, 2 of its 4 cells."""
    from balance.pipeline import preflight, prepare
    from balance.record import StageOne
    from balance.storage import storage_url
    from balance.study import Objective, run_one_trial
    from balance.study_file import load_study_file

    config = load_study_file(study_file)
    data = preflight(config)
    study = prepare(config, storage_url(config, None, root), data)
    objective = Objective(config, data, StageOne.from_study(study).max_lrs, threads=1)
    for _ in range(2):
        run_one_trial(study, objective)
    return {t.number: t.value for t in study.get_trials() if t.value is not None}


def test_sweep_resumes_a_partial_study_then_reports_then_resumes_a_finished_one(
    tmp_path: Path,
) -> None:
    import optuna

    from balance.storage import open_storage

    study = write_study(tmp_path)
    root = tmp_path / "reports"
    journal = root / "cli-tiny" / "study.journal"
    kept = train_two_cells(study, root)
    assert len(kept) == 2

    first = invoke("sweep", str(study), "--root", str(root), "--workers", "1", "--quiet")

    assert first.exit_code == 0, first.output
    assert "trials: {'complete': 4}" in first.stdout
    assert "best (trial" in first.stdout and "max_lr: batch 64:" in first.stdout
    trials = optuna.load_study(study_name="cli-tiny", storage=open_storage(str(journal)))
    values = {t.number: t.value for t in trials.get_trials()}
    assert sorted(values) == [0, 1, 2, 3], "the resumed sweep trained only the 2 cells left"
    assert kept.items() <= values.items(), "the cells done before were kept, not retrained"
    page = root / "cli-tiny" / "index.html"
    assert str(study) in page.read_text()  # the header names the study file
    summary = json.loads((root / "cli-tiny" / "summary.json").read_text())
    assert summary["trials"] == {"complete": 4} and summary["audit"]["duplicated"] == []

    page.unlink()
    rebuilt = invoke("report", str(study), "--root", str(root))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert page.exists()

    again = invoke("sweep", str(study), "--root", str(root), "--quiet")
    assert again.exit_code == 0, again.output
    summary = json.loads((root / "cli-tiny" / "summary.json").read_text())
    assert summary["trials"] == {"complete": 4}, "a resumed grid runs no cell twice"


def test_worker_refuses_a_study_that_sweep_has_not_started(tmp_path: Path) -> None:
    journal = tmp_path / "nowhere.journal"
    result = invoke("worker", str(write_study(tmp_path)), "--storage", str(journal))

    assert result.exit_code == 2
    assert result.stderr.startswith("error: study")
