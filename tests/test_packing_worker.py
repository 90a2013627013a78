"""Packed workers (``pack = K``): queued grid trials trained K at a time, recorded as alone."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from study_files import load_study as load
from study_files import record_of, study_config, tiny_values
from torch import nn

from balance.analysis import audit, trials_frame
from balance.cells import cell_key
from balance.config import ConfigError, StudyConfig
from balance.pipeline import prepare, sweep
from balance.storage import open_storage
from balance.study import _packing, load_study_data, run_worker

RELATIVE = 1e-5  # tests/test_packed.py's tolerance on losses (vmap reorders sums)


def tiny(name: str, **overrides: Any) -> StudyConfig:
    """A digits/mlp grid of 2 weight decays x 2 dropouts, one epoch a run."""
    return study_config(tiny_values(name), **overrides)


def by_cell(config: StudyConfig, root: Path) -> dict[str, FrozenTrial]:
    study = load(config, root)
    return {t.user_attrs["cell"]: t for t in study.get_trials(states=(TrialState.COMPLETE,))}


def assert_clean_audit(config: StudyConfig, root: Path) -> None:
    study = load(config, root)
    report = audit(trials_frame(record_of(study, config)), config)
    assert report["missing"] == [] and report["duplicated"] == []
    cells = sorted(t.user_attrs["cell"] for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert cells == sorted(cell_key(c) for c in config.search.grid_cells())


def assert_same_values(alone: dict[str, Any], packed: dict[str, Any]) -> None:
    """User attributes equal, numbers within RELATIVE; timings may differ."""
    assert alone.keys() == packed.keys()
    for key, value in alone.items():
        if key in ("worker", "train_time", "samples_per_second", "wall_time"):
            continue
        other = packed[key]
        if isinstance(value, dict):
            assert_same_values(value, other)
        elif isinstance(value, list):
            assert len(value) == len(other), key
            for a, b in zip(value, other, strict=True):
                if isinstance(a, dict):
                    assert_same_values(a, b)
                else:
                    assert b == pytest.approx(a, rel=RELATIVE), key
        elif isinstance(value, float):
            assert other == pytest.approx(value, rel=RELATIVE), key
        else:
            assert other == value, key


LR_GRID = {"weight_decay": [0.0, 1e-3], "dropout": [0.2], "lr_multiplier": [0.5, 2.0]}


@pytest.mark.parametrize(
    ("seeds", "search"), [(1, None), (2, None), (1, LR_GRID)], ids=["1", "2", "lr"]
)
def test_packed_sweep_trains_every_cell_once_as_one_at_a_time_would(
    tmp_path: Path, seeds: int, search: dict[str, Any] | None
) -> None:
    space = {} if search is None else {"search": search}
    alone = tiny(f"alone-{seeds}", seeds=seeds, **space)
    packed = tiny(f"packed-{seeds}", seeds=seeds, pack=4, **space)
    calls: list[int] = []
    real = _packing.train_packed

    def counted(configs: Any, **kwargs: Any) -> Any:
        calls.append(len(configs))
        return real(configs, **kwargs)

    sweep(alone, root=tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_packing, "train_packed", counted)
        sweep(packed, root=tmp_path)
    assert calls == [4 * seeds]  # one pack: LR multipliers pack together
    for config in (alone, packed):
        assert_clean_audit(config, tmp_path)
    one, many = by_cell(alone, tmp_path), by_cell(packed, tmp_path)
    assert one.keys() == many.keys()
    for cell, trial in one.items():
        other = many[cell]
        assert other.value == pytest.approx(trial.value, rel=RELATIVE)
        assert other.params == trial.params
        assert other.intermediate_values.keys() == trial.intermediate_values.keys()
        for step, value in trial.intermediate_values.items():
            assert other.intermediate_values[step] == pytest.approx(value, rel=RELATIVE)
        assert_same_values(trial.user_attrs, other.user_attrs)


def test_the_pack_flag_overrides_the_file(tmp_path: Path) -> None:
    config = tiny("flag")
    calls: list[int] = []
    real = _packing.train_packed

    def counted(configs: Any, **kwargs: Any) -> Any:
        calls.append(len(configs))
        return real(configs, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_packing, "train_packed", counted)
        sweep(config, root=tmp_path, pack=3)
    assert calls == [3, 1]  # 4 cells, 3 at a time
    assert_clean_audit(config, tmp_path)


def _factory(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    size = 1
    for dim in input_shape:
        size *= dim
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(size, num_classes))


def test_a_model_that_cannot_pack_trains_one_at_a_time_with_one_line_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny("fallback", pack=4)
    with caplog.at_level(logging.WARNING, logger="balance.study"):
        sweep(config, root=tmp_path, model=_factory)
    lines = [r.getMessage() for r in caplog.records if r.name == "balance.study"]
    assert len(lines) == 1 and lines[0].startswith("pack: training one trial at a time: model")
    assert_clean_audit(config, tmp_path)


def test_a_stop_mid_pack_requeues_its_cells_and_keeps_finished_ones(tmp_path: Path) -> None:
    config = tiny("stopped", pack=2)
    real = _packing.train_packed
    calls: list[int] = []

    def stop_second(configs: Any, **kwargs: Any) -> Any:
        calls.append(len(configs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(configs, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_packing, "train_packed", stop_second)
        with pytest.raises(KeyboardInterrupt):
            sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 2
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2  # requeued
    assert not study.get_trials(states=(TrialState.RUNNING,))
    sweep(config, root=tmp_path)
    assert_clean_audit(config, tmp_path)
    assert len(load(config, tmp_path).get_trials(states=(TrialState.COMPLETE,))) == 4


def test_pack_needs_the_grid_sampler_without_racing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pack = 2 .* needs sampler 'grid'"):
        tiny("tpe", sampler="tpe", n_trials=4, search={"weight_decay": [0.0, 1e-3]}, pack=2)
    with pytest.raises(ConfigError, match=r"pack = 'auto' .* race = false"):
        tiny("race", seeds=2, max_seeds=4, race=True, pack="auto")
    config = tiny("random", sampler="random", n_trials=2)
    with pytest.raises(ConfigError, match=r"pack = 3 .* needs sampler 'grid'") as error:
        sweep(config, root=tmp_path, pack=3)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="pack = 2"):
        run_worker(config, str(tmp_path / "none.journal"), pack=2)
    with pytest.raises(ConfigError, match=r"^pack: must be an integer >= 1 or 'auto' \(got 0\)$"):
        sweep(tiny("zero"), root=tmp_path, pack=0)
    assert tiny("pruned", pruner="median", pack=2).pack == 2  # pruners judge packed trials


# Five good cells fill the first pack; the two heavily decayed ones come second, judged
# by the median pruner against those five, as one at a time judges them.
PRUNED_GRID = {"weight_decay": [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.5, 1.0], "dropout": [0.0]}


def test_a_packed_sweep_prunes_the_trials_one_at_a_time_prunes(tmp_path: Path) -> None:
    overrides: dict[str, Any] = {"pruner": "median", "search": PRUNED_GRID}
    train = {"epochs": 4, "batch_size": 64}
    alone = tiny("prune-alone", train=train, **overrides)
    packed = tiny("prune-packed", train=train, pack=5, **overrides)
    sweep(alone, root=tmp_path)
    sweep(packed, root=tmp_path)

    def outcomes(config: StudyConfig) -> dict[str, tuple[str, list[int]]]:
        return {
            t.user_attrs["cell"]: (t.state.name, sorted(t.intermediate_values))
            for t in load(config, tmp_path).get_trials()
        }

    one, many = outcomes(alone), outcomes(packed)
    assert [state for state, _ in one.values()].count("PRUNED") >= 1
    assert one == many
    pruned = {t.user_attrs["cell"]: t for t in load(alone, tmp_path).get_trials()}
    for trial in load(packed, tmp_path).get_trials(states=(TrialState.PRUNED,)):
        assert len(trial.intermediate_values) < 4  # stopped early, its epochs so far kept
        assert_same_values(pruned[trial.user_attrs["cell"]].user_attrs, trial.user_attrs)
    report = audit(trials_frame(record_of(load(packed, tmp_path), packed)), packed)
    assert report["missing"] == [] and report["duplicated"] == []


def _killed_on_second_pack(config: StudyConfig, url: str) -> None:
    """A worker process that dies (SIGKILL) once its second pack is claimed."""
    calls: list[int] = []
    real = _packing.train_packed

    def die_second(configs: Any, **kwargs: Any) -> Any:
        calls.append(len(configs))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(configs, **kwargs)

    _packing.train_packed = die_second  # type: ignore[assignment]
    run_worker(config, url)


def test_a_killed_packed_worker_loses_no_finished_trial_and_repeats_none(tmp_path: Path) -> None:
    config = tiny("killed", pack=2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    prepare(config, url, load_study_data(config))
    process = multiprocessing.get_context("spawn").Process(
        target=_killed_on_second_pack, args=(config, url)
    )
    process.start()
    process.join()
    assert process.exitcode == -signal.SIGKILL
    study = optuna.load_study(study_name=config.name, storage=open_storage(url))
    finished = {
        t.number: t.user_attrs["cell"] for t in study.get_trials(states=(TrialState.COMPLETE,))
    }
    assert len(finished) == 2
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 2  # the dead pack's
    sweep(config, root=tmp_path, storage=url)  # finds the dead worker's trials, queues them
    study = optuna.load_study(study_name=config.name, storage=open_storage(url))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert {t.number: t.user_attrs["cell"] for t in complete if t.number in finished} == finished
    assert len(complete) == 4 and not study.get_trials(states=(TrialState.RUNNING,))
    report = audit(trials_frame(record_of(study, config)), config)
    assert report["missing"] == [] and report["duplicated"] == []


def test_pack_auto_probes_the_machine_and_says_what_it_chose(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny("auto", pack="auto")
    with caplog.at_level(logging.WARNING, logger="balance.study"):
        sweep(config, root=tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "balance.study"]
    assert len(lines) == 1
    assert re.fullmatch(
        r"pack auto: K = \d+ \(member-samples/s packed / one at a time: "
        r"K=2 [\d.]+x, K=4 [\d.]+x; chosen above 1.1x\)",
        lines[0],
    ), lines[0]
    assert_clean_audit(config, tmp_path)


def test_claimed_trials_beat_while_the_pack_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a database, a stale-trial sweep during a long pack finds none of its trials stale."""
    monkeypatch.setenv("BALANCE_HEARTBEAT_S", "1")  # stale after 3 s of silence
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = tiny("beats", pack=4)
    real = _packing.train_packed

    def slow(configs: Any, **kwargs: Any) -> Any:
        time.sleep(4.5)
        study = optuna.load_study(study_name=config.name, storage=open_storage(url))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        assert len(study.get_trials(states=(TrialState.RUNNING,))) == len(configs)
        return real(configs, **kwargs)

    monkeypatch.setattr(_packing, "train_packed", slow)
    sweep(config, root=tmp_path, storage=url)
    study = optuna.load_study(study_name=config.name, storage=open_storage(url))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert not study.get_trials(states=(TrialState.FAIL,))


def test_two_packed_workers_share_a_grid_of_two_batch_sizes_without_repeats(
    tmp_path: Path,
) -> None:
    config = tiny("two", search={"batch_size": [32, 64]}, pack=3, workers=2)
    result = sweep(config, root=tmp_path)
    assert result.summary["audit"]["missing"] == []
    assert result.summary["audit"]["duplicated"] == []
    assert_clean_audit(config, tmp_path)
    assert not load(config, tmp_path).get_trials(states=(TrialState.FAIL,))
