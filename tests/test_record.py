"""The study record: one reader of what a study stores, and one best cell everywhere.

Trials are written in the stored form balance's own writers produce (``SeedRun.to_attrs``,
``record.enqueue_cell``'s key) into a real in-memory Optuna study, so tied means and a cell
trained twice can be set up exactly; training could not make them on demand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from study_files import ROOT, study_config

from balance.analysis import balance_grid, grid_axes, runs_frame, summarize, trials_frame
from balance.cells import cell_key, parse_cell_key
from balance.config import StudyConfig
from balance.pipeline import load_study_record
from balance.record import StudyRecord, load_record
from balance.report import _sections as sections
from balance.runs import (
    Curve,
    EvaluationRun,
    EvaluationSide,
    FinalEvaluation,
    SeedRun,
    pack_correct,
)
from balance.study import chosen_setting
from balance.study_file import load_study_file

WEIGHT_DECAYS = [0.0, 1e-4, 1e-3]
DROPOUTS = [0.0, 0.2]


def config() -> StudyConfig:
    return study_config(
        {
            "name": "tied",
            "sampler": "grid",
            "seeds": 2,
            "train": {"data": "digits", "model": "mlp", "max_lr": 0.1, "batch_size": 64},
            "search": {"weight_decay": WEIGHT_DECAYS, "dropout": DROPOUTS},
        }
    )


def seed_run(seed: int, accuracy: float) -> dict[str, Any]:
    curve = Curve([1], [0.5], [0.4], [accuracy])
    return SeedRun(seed, accuracy, 0.4, 0.5, 10, curve, train_time=0.1).to_attrs()


def add_trial(study: optuna.Study, weight_decay: float, dropout: float, *accs: float) -> None:
    """A completed trial of one cell whose seeds reached ``accs`` (objective: their mean).

    A cell added again gets the next seeds, as the objective gives a re-proposed cell.
    """
    params = {"weight_decay": weight_decay, "dropout": dropout}
    first = sum(
        len(trial.user_attrs["runs"])
        for trial in study.trials
        if trial.user_attrs["cell"] == cell_key(params)
    )
    study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions={
                "weight_decay": CategoricalDistribution(WEIGHT_DECAYS),
                "dropout": CategoricalDistribution(DROPOUTS),
            },
            value=sum(accs) / len(accs),
            user_attrs={
                "cell": cell_key(params),
                "max_lr": 0.1,
                "runs": [seed_run(seed, acc) for seed, acc in enumerate(accs, start=first)],
            },
        )
    )


def record_with(
    *trials: tuple[float, float, tuple[float, ...]],
) -> tuple[optuna.Study, StudyRecord]:
    study = optuna.create_study(direction="maximize")
    for weight_decay, dropout, accs in trials:
        add_trial(study, weight_decay, dropout, *accs)
    return study, load_record(study, config(), storage="memory")


def every_best(study: optuna.Study, record: StudyRecord) -> dict[str, tuple[float, float]]:
    """The best cell as the test evaluation, summary.json, verdict and heatmap name it."""
    trials = trials_frame(record)
    runs = runs_frame(record)
    _, params = chosen_setting(study, record.config)
    summary = summarize(record, trials)["best"]
    balance = sections.balance_section(record, runs, trials)
    verdict = balance["verdict"].best
    return {
        "test evaluation": (params["weight_decay"], params["dropout"]),
        "summary.json": (summary["params"]["weight_decay"], summary["params"]["dropout"]),
        "verdict": (verdict.weight_decay, verdict.dropout),
        "record": (record.best.params["weight_decay"], record.best.params["dropout"]),
    }


def test_cell_keys_parse_back_to_their_values() -> None:
    params = {"weight_decay": 5e-4, "dropout": 0.1, "batch_size": 64}
    assert parse_cell_key(cell_key(params)) == params
    assert parse_cell_key("") == {}


def test_tied_means_go_to_the_cell_with_more_seeds_everywhere() -> None:
    # Trial 0's cell and trial 2's cell tie at 0.9; the second has four seeds (trained twice).
    study, record = record_with(
        (1e-3, 0.2, (0.9, 0.9)),
        (0.0, 0.0, (0.8, 0.8)),
        (1e-4, 0.2, (0.95, 0.85)),
        (1e-4, 0.2, (0.9, 0.9)),
    )
    assert set(every_best(study, record).values()) == {(1e-4, 0.2)}
    assert record.best is not None and record.best.seeds == 4 and record.best.trials == (2, 3)


def test_tied_means_and_seeds_go_to_the_least_regularized_cell_everywhere() -> None:
    # Listed with the larger weight decay first, so trial order alone would pick it.
    study, record = record_with((1e-3, 0.0, (0.9, 0.9)), (1e-4, 0.2, (0.9, 0.9)))
    assert set(every_best(study, record).values()) == {(1e-4, 0.2)}
    assert "tie at this mean" in " ".join(
        sections.balance_section(record, runs_frame(record), trials_frame(record))[
            "verdict"
        ].sentences
    )


def test_a_cell_trained_twice_pools_its_seeds_and_is_reported_as_duplicated() -> None:
    # Alone, trial 0 (0.96) beats the other cell (0.95); pooled with its repeat (0.90) it
    # does not, and every consumer must say so.
    study, record = record_with(
        (0.0, 0.0, (0.96, 0.96)), (1e-3, 0.2, (0.95, 0.95)), (0.0, 0.0, (0.90, 0.90))
    )
    assert set(every_best(study, record).values()) == {(1e-3, 0.2)}
    grid = balance_grid(runs_frame(record), "val_accuracy", axes=grid_axes(record.config))
    pooled = grid.loc[(64, 1.0, 0.0, 0.0)]
    assert pooled["seeds"] == 4 and pooled["mean"] == pytest.approx(0.93)
    summary = summarize(record, trials_frame(record))
    assert summary["audit"]["duplicated"] == [cell_key({"weight_decay": 0.0, "dropout": 0.0})]
    assert summary["best"]["trial"] == 1


def test_the_final_evaluation_round_trips_through_its_stored_form() -> None:
    run = EvaluationRun(
        seed=0, test_accuracy=0.9, steps=[7, 14], test_curve=[0.5, 0.9], diverged=False
    )
    final = FinalEvaluation(
        trial=3,
        params={"weight_decay": 0.0, "dropout": 0.2, "batch_size": 64},
        chosen=EvaluationSide.of_runs(0.1, [run]),
        baseline=EvaluationSide.of_runs(0.01, [run], {"policy": "constant"}),
    )
    assert FinalEvaluation.from_attrs(final.to_attrs()) == final
    assert list(final.to_attrs()["baseline"]) == [
        "config",
        "max_lr",
        "test_accuracy",
        "test_accuracy_std",
        "runs",
    ]


def test_a_journal_of_an_older_layout_reads_back_to_its_summary(tmp_path: Path) -> None:
    """The record of a journal balance wrote before runs kept per-example correctness
    (the default study as committed on 2026-12-01, with its study file) gives its
    summary.json, number for number: the stored schema is still read as it was meant.
    """
    import json

    old = ROOT / "tests" / "data" / "old-layout"
    (tmp_path / "mnist1d-cnn").mkdir()
    shutil.copy(old / "mnist1d-cnn" / "study.journal", tmp_path / "mnist1d-cnn" / "study.journal")
    committed = json.loads((old / "mnist1d-cnn" / "summary.json").read_text())
    record = load_study_record(load_study_file(old / "mnist1d-cnn.toml"), root=tmp_path)
    summary = summarize(record, trials_frame(record), wall_time=committed["wall_time_s"])
    # Fields added since only extend the summary: without per-example correctness no
    # comparison carries an interval, and the summary says so with nulls.
    assert summary["best"].pop("val_accuracy_interval") is None
    assert summary["best"]["params"].pop("lr_multiplier") == 1.0  # the LR axis, unsearched
    assert summary["indistinguishable"] is None and summary["noise"] is None
    assert summary["cells"] == [] and summary["axes"] == {}
    added = {"noise", "cells", "indistinguishable", "axes", "what_it_would_take", "test_difference"}
    added |= {"lr_tradeoff", "batch_sizes", "batch_scaling", "noise_scale"}  # the LR axis
    assert summary["lr_tradeoff"] is None and summary["batch_sizes"] == []
    assert summary["noise_scale"] == {}  # stage 1 measured no noise scale then
    assert {k for k in summary if k not in committed} == added
    assert {summary["audit"].pop(k) for k in ("raced_trials", "race_rounds")} == {0}
    different = {
        k for k in committed if k not in ("storage", "environment") and summary[k] != committed[k]
    }
    assert not different


def test_a_journal_of_an_older_layout_still_makes_a_report_that_says_what_it_lacks(
    tmp_path: Path,
) -> None:
    from balance.report import build_report

    old = ROOT / "tests" / "data" / "old-layout"
    (tmp_path / "mnist1d-cnn").mkdir()
    shutil.copy(old / "mnist1d-cnn" / "study.journal", tmp_path / "mnist1d-cnn" / "study.journal")
    record = load_study_record(load_study_file(old / "mnist1d-cnn.toml"), root=tmp_path)
    page = build_report(record, root=tmp_path).read_text()
    assert "kept no per-example results" in page  # no comparison carries an interval
    assert "Tests of no effect" not in page
    assert "mean ± std over 2 seeds" in page  # the verdict of raw seed statistics


def test_the_committed_example_reads_back_to_its_committed_summary(tmp_path: Path) -> None:
    """The committed example's journal gives its summary.json, noise analysis included."""
    import json

    example = ROOT / "reports" / "example" / "mnist1d-cnn"
    (tmp_path / "mnist1d-cnn").mkdir()
    shutil.copy(example / "study.journal", tmp_path / "mnist1d-cnn" / "study.journal")
    committed = json.loads((example / "summary.json").read_text())
    record = load_study_record(
        load_study_file(ROOT / "studies" / "mnist1d-cnn.toml"), root=tmp_path
    )
    summary = summarize(record, trials_frame(record), wall_time=committed["wall_time_s"])
    assert summary["indistinguishable"] and summary["axes"]  # the default study is measured
    different = {
        k for k in committed if k not in ("storage", "environment") and summary[k] != committed[k]
    }
    assert not different


def test_test_runs_keep_their_per_example_correctness_through_the_stored_form() -> None:
    correct = [True, True, False, True, False]
    run = EvaluationRun(
        seed=1,
        test_accuracy=0.6,
        steps=[5],
        test_curve=[0.6],
        diverged=False,
        test_correct=pack_correct(correct),
        test_examples=len(correct),
    )
    side = EvaluationSide.from_attrs(
        json.loads(json.dumps(EvaluationSide.of_runs(0.1, [run]).to_attrs()))
    )
    assert side.runs == (run,)
    stored = side.runs[0].correct()
    assert stored is not None and stored.tolist() == correct
    old = {"seed": 0, "test_accuracy": 0.9, "steps": [7], "test_curve": [0.9], "diverged": False}
    (read,) = EvaluationSide.from_attrs({"runs": [old]}).runs  # stored before the field
    assert read.correct() is None and read.test_correct is None


def test_a_study_stored_before_the_lr_axis_resumes_and_keeps_its_test_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committed example was stored before ``lr_multiplier`` existed: its signature and
    its test result name three axes. Resuming it must neither refuse the file nor retrain
    the test runs, and its report must not say the best cell moved."""
    from balance.data import load_dataset
    from balance.storage import storage_url
    from balance.study import _evaluation, create_or_resume, evaluate_on_test

    example = ROOT / "reports" / "example" / "mnist1d-cnn"
    (tmp_path / "mnist1d-cnn").mkdir()
    shutil.copy(example / "study.journal", tmp_path / "mnist1d-cnn" / "study.journal")
    config = load_study_file(ROOT / "studies" / "mnist1d-cnn.toml")
    study = create_or_resume(config, storage_url(config, None, tmp_path))  # not refused

    def retrain(*_: Any) -> None:
        raise AssertionError("the stored test result was trained again")

    monkeypatch.setattr(_evaluation, "_test_run", retrain)
    # any data set will do: a stored result that still holds is returned before training
    final = evaluate_on_test(study, config, load_dataset("digits"))
    assert "lr_multiplier" not in final.params  # the stored result, as it was stored
    words = sections.test_section(load_study_record(config, root=tmp_path))["test_words"]
    assert words and not any("the best cell is now trial" in line for line in words)
