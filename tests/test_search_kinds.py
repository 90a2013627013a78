"""Every way a study can be searched runs end to end: each sampler and pruner, list and range
axes mixed, every LR scaling rule, and every study file the repository ships."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from study_files import ROOT, study_config, tiny_values

from balance.config import ConfigError
from balance.data import Dataset
from balance.pipeline import load_study_record, preflight, sweep
from balance.study import fit_max_lrs
from balance.study_file import load_study_file
from balance.train import train

pytestmark = pytest.mark.filterwarnings("ignore::balance.range_test.RangeTestWarning")

STUDY_FILES = sorted((ROOT / "studies").glob("*.toml"))
LOCAL_DATA = ("fashion-mnist", "mnist", "cifar10")  # read from files the user gives


@pytest.mark.parametrize(
    ("sampler", "pruner"), [("tpe", "hyperband"), ("gp", "median"), ("random", "none")]
)
def test_each_sampler_and_pruner_runs_a_study_with_list_and_range_axes(
    sampler: str, pruner: str, tmp_path: Path
) -> None:
    values = tiny_values(
        f"{sampler}-{pruner}",
        sampler=sampler,
        pruner=pruner,
        n_trials=4,
        seeds=2,
        train={"epochs": 2},
        # ranges and a list in one space: the report must bin one and keep the other
        search={
            "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
            "dropout": [0.0, 0.2],
            "lr_multiplier": {"low": 0.25, "high": 2.0, "log": True},
        },
    )
    config = study_config(values)
    result = sweep(config, root=tmp_path)

    summary = result.summary
    assert sum(summary["trials"].values()) == 4
    assert summary["trials"].get("complete", 0) >= 1 and summary["best"] is not None
    record = load_study_record(config, root=tmp_path)
    for trial in record.trials:
        assert 1e-5 <= trial.params["weight_decay"] <= 1e-2
        assert trial.params["dropout"] in (0.0, 0.2)
        # the peak LR is the file's max LR (stage 1's answer) times the trial's multiplier
        assert 0.25 <= trial.params["lr_multiplier"] <= 2.0
        assert trial.max_lr == pytest.approx(0.1 * trial.params["lr_multiplier"])
    best = summary["best"]["params"]
    assert best == record.best.params and "lr_multiplier" in best
    page = result.report.read_text()
    assert "Bayesian study" in page and "scatter of trials over weight decay" in page


@pytest.mark.parametrize(
    ("rule", "scale"),
    [("linear", lambda r: r), ("sqrt", math.sqrt), ("none", lambda r: 1.0)],
)
def test_lr_scaling_runs_one_range_test_and_scales_its_lr(rule, scale, digits: Dataset) -> None:  # type: ignore[no-untyped-def]
    values = tiny_values(
        f"scaled-{rule}",
        lr_scaling=rule,
        range_test={"num_steps": 20, "repeats": 1},
        search={"weight_decay": [0.0], "batch_size": [32, 64, 128]},
    )
    values["train"] = {**values["train"], "max_lr": None}
    config = study_config(values)
    max_lrs, tests = fit_max_lrs(config, digits, threads=1)

    assert list(tests) == [64]  # one test, at train.batch_size
    reference = tests[64].max_lr
    assert max_lrs[64] == reference
    for size in (32, 128):
        assert max_lrs[size] == pytest.approx(reference * scale(size / 64))


def test_range_test_per_batch_size_runs_one_test_for_each() -> None:
    config = study_config(
        tiny_values(
            "per-size",
            lr_scaling="range-test",
            range_test={"num_steps": 20, "repeats": 1},
            train={"max_lr": None},
            search={"weight_decay": [0.0], "batch_size": [32, 128]},
        )
    )
    max_lrs, tests = fit_max_lrs(config, preflight(config), threads=1)
    assert sorted(tests) == [32, 128]
    assert max_lrs == {size: test.max_lr for size, test in tests.items()}


@pytest.mark.parametrize("path", STUDY_FILES, ids=[path.name for path in STUDY_FILES])
def test_every_shipped_study_file_is_valid_and_its_data_and_model_check(path: Path) -> None:
    config = load_study_file(path)
    assert config.name == path.stem
    if config.train.data in LOCAL_DATA:
        # Their data is read from files the user gives: absent here, and said in one line.
        with pytest.raises(ConfigError, match=r"^data_path: "):
            preflight(config)
    else:
        data = preflight(config)
        assert len(data.x_train) >= max(config.batch_sizes)


def test_asking_for_cuda_where_there_is_none_is_a_config_error(digits: Dataset) -> None:
    config = tiny_values("cuda")["train"] | {"device": "cuda"}
    from balance.config import TrainConfig

    if torch.cuda.is_available():  # a CUDA machine: the same request trains there
        assert train(TrainConfig(**config), data=digits).final is not None
        return
    with pytest.raises(ConfigError, match=r"^device: 'cuda' requested but CUDA is not available"):
        train(TrainConfig(**config), data=digits)


def test_an_lr_multiplier_grid_trains_each_level_at_its_share_of_stage_ones_lr(
    tmp_path: Path,
) -> None:
    config = study_config(
        tiny_values(
            "lr-levels",
            search={"weight_decay": [0.0, 1e-3], "lr_multiplier": [0.5, 1.0, 2.0]},  # x 2 dropouts
        )
    )
    result = sweep(config, root=tmp_path)
    record = load_study_record(config, root=tmp_path)
    trained = {trial.cell: trial.max_lr for trial in record.trials if trial.state == "complete"}
    assert len(trained) == 12 and result.summary["audit"]["missing"] == []
    for trial in record.trials:
        assert trial.max_lr == pytest.approx(0.1 * trial.params["lr_multiplier"])
        assert trial.cell.endswith(f"|lr_multiplier={trial.params['lr_multiplier']!r}")
    frame = pd.read_csv(tmp_path / "lr-levels" / "trials.csv")
    assert sorted(frame["lr_multiplier"].unique()) == [0.5, 1.0, 2.0]
    assert frame["max_lr"].tolist() == pytest.approx((0.1 * frame["lr_multiplier"]).tolist())
    assert pd.read_parquet(tmp_path / "lr-levels" / "trials.parquet")["lr_multiplier"].size == 12
    assert "lr_multiplier" in result.summary["axes"]
    # the chosen cell is retrained on test at its own LR, not at the range test's
    multiplier = result.summary["best"]["params"]["lr_multiplier"]
    assert result.summary["test"]["chosen"]["max_lr"] == pytest.approx(0.1 * multiplier)
    # stage 1 measured the gradient noise scale at the study's one batch size
    scale = result.summary["noise_scale"]["64"]
    assert scale["batch_size"] == 64 and scale["steps"] >= 2
    page = result.report.read_text()
    assert "The best weight decay at each LR level" in page and "B_simple" in page
    assert "weight decays tied with it" in page  # the table of each level's best
