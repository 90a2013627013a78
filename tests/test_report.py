"""The HTML report on real tiny studies: its numbers are the trials' numbers, its axes are in
numeric order, empty and diverged cells are marked, partial and Bayesian studies render, and
the page is self-contained."""

from __future__ import annotations

import re
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.trial import TrialState
from study_files import load_study as load
from study_files import record_of, stored_cells
from study_files import study_config as merged_config

from balance.analysis import (
    METRIC_LABELS,
    METRICS,
    analyse_noise,
    balance_grid,
    balance_verdict,
    grid_axes,
    grid_key,
    runs_frame,
    trials_frame,
)
from balance.config import ConfigError, StudyConfig
from balance.pipeline import report as build_report
from balance.pipeline import sweep
from balance.report.heatmaps import format_cell, plot_balance, plot_balance_scatter
from balance.storage import storage_url
from balance.study import Objective, create_or_resume, enqueue_missing_cells, fix_max_lrs

# Listed out of order, and chosen so that text order (0, 0.001, 10000, 1e-05) differs from
# numeric order. Weight decay 1e4 makes every run diverge in its first epoch.
WEIGHT_DECAYS = [1e-3, 0.0, 1e-5, 1e4]
DROPOUTS = [0.2, 0.0]
BATCH_SIZES = [128, 64]

pytestmark = pytest.mark.filterwarnings("ignore::balance.range_test.RangeTestWarning")


def study_config(name: str, **overrides: Any) -> StudyConfig:
    """A digits/mlp study, one epoch per run: a run takes a fraction of a second."""
    values: dict[str, Any] = {
        "name": name,
        "sampler": "grid",
        "seeds": 2,
        "train": {"data": "digits", "model": "mlp", "epochs": 1, "batch_size": 64, "threads": 1},
        "range_test": {"num_steps": 24, "val_every": 4},
        "search": {"weight_decay": WEIGHT_DECAYS, "dropout": DROPOUTS, "batch_size": BATCH_SIZES},
        "baseline": {
            "optimizer": "adam",
            "policy": "constant",
            "max_lr": 0.01,
            "weight_decay": 0.0,
            "dropout": 0.0,
        },
    }
    return merged_config(values, **overrides)


class Page(HTMLParser):
    """Every tag's attributes and the visible text of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def images(self) -> list[str]:
        return [str(attrs.get("src")) for tag, attrs in self.tags if tag == "img"]

    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyConfig, Path, Path]:
    """A finished grid study (16 cells, 2 seeds, 4 diverging cells) and its report."""
    root = tmp_path_factory.mktemp("reports")
    config = study_config("grid")
    sweep(config, root=root)
    return config, root, build_report(config, root=root)


def expected_cells(
    study: optuna.Study, metric: str
) -> dict[tuple[int, float, float, float], tuple[float, float, int]]:
    """Mean, population std and count over seeds per cell, straight from the trials' runs.

    Keyed as a balance grid: ``(batch_size, lr_multiplier, weight_decay, dropout)``.
    """
    values: dict[tuple[int, float, float, float], list[float]] = {}
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        params = trial.params
        key = (params["batch_size"], 1.0, params["weight_decay"], params["dropout"])
        for run in trial.user_attrs["runs"]:
            value = (
                run["val_accuracy"]
                if metric == "val_accuracy"
                else (run["val_loss"] - run["train_loss"] if metric == "gap" else run["val_loss"])
            )
            values.setdefault(key, []).append(value)
    return {key: (statistics.fmean(v), statistics.pstdev(v), len(v)) for key, v in values.items()}


def facet_cells(ax: Axes) -> dict[tuple[float, float], list[str]]:
    """Texts drawn in each heatmap cell, keyed by the axis labels (weight decay, dropout)."""
    xs = {
        round(tick - 0.5): float(label.get_text())
        for tick, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
    }
    ys = {
        round(tick - 0.5): float(label.get_text())
        for tick, label in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)
    }
    cells: dict[tuple[float, float], list[str]] = {}
    for text in ax.texts:
        x, y = text.get_position()
        cells.setdefault((ys[int(y)], xs[int(x)]), []).append(text.get_text())
    return cells


def facets(figure: Figure) -> dict[int, Axes]:
    return {
        int(ax.get_title().removeprefix("batch size ")): ax
        for ax in figure.axes
        if ax.get_title().startswith("batch size")
    }


@pytest.mark.parametrize("metric", ["val_accuracy", "val_loss", "gap"])
def test_heatmap_numbers_are_the_means_over_seeds_of_the_trials_runs(
    finished: tuple[StudyConfig, Path, Path], metric: str
) -> None:
    config, root, _ = finished
    study = load(config, root)
    runs, trials = runs_frame(record_of(study, config)), trials_frame(record_of(study, config))
    grid = balance_grid(runs, metric, trials=trials, axes=grid_axes(config))
    expected = expected_cells(study, metric)
    assert len(expected) == 12
    measured = grid[grid["seeds"] > 0]
    assert set(measured.index) == set(expected)
    for key, (mean, std, seeds) in expected.items():
        assert measured.loc[key, "mean"] == pytest.approx(mean, abs=1e-12)
        assert measured.loc[key, "std"] == pytest.approx(std, abs=1e-12)
        assert measured.loc[key, "seeds"] == seeds == 2
    figure = plot_balance(grid, metric)
    for size, ax in facets(figure).items():
        drawn = facet_cells(ax)
        for (batch_size, _, weight_decay, dropout), (mean, std, seeds) in expected.items():
            if batch_size == size:
                assert drawn[(weight_decay, dropout)] == [format_cell(mean, std, seeds)]


def test_trial_values_agree_with_the_grid(finished: tuple[StudyConfig, Path, Path]) -> None:
    config, root, _ = finished
    study = load(config, root)
    grid = balance_grid(runs_frame(record_of(study, config)), "val_accuracy")
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        key = (
            trial.params["batch_size"],
            1.0,
            trial.params["weight_decay"],
            trial.params["dropout"],
        )
        assert grid.loc[key, "mean"] == pytest.approx(trial.value, abs=1e-12)


def test_heatmap_axes_are_in_numeric_order_not_text_or_file_order(
    finished: tuple[StudyConfig, Path, Path],
) -> None:
    config, root, _ = finished
    study = load(config, root)
    grid = balance_grid(
        runs_frame(record_of(study, config)),
        "val_accuracy",
        trials=trials_frame(record_of(study, config)),
        axes=grid_axes(config),
    )
    figure = plot_balance(grid, "val_accuracy")
    ax_by_size = facets(figure)
    assert list(ax_by_size) == sorted(BATCH_SIZES)
    lefts = [ax.get_position().x0 for ax in ax_by_size.values()]
    assert lefts == sorted(lefts), "batch-size facets run left to right in numeric order"
    for ax in ax_by_size.values():
        # Sort the labels by where they appear on screen: bottom to top, left to right.
        y_labels = sorted(
            ax.get_yticklabels(), key=lambda label: ax.transData.transform(label.get_position())[1]
        )
        x_labels = sorted(
            ax.get_xticklabels(), key=lambda label: ax.transData.transform(label.get_position())[0]
        )
        assert [float(label.get_text()) for label in y_labels] == sorted(WEIGHT_DECAYS)
        assert [float(label.get_text()) for label in x_labels] == sorted(DROPOUTS)
        assert [label.get_text() for label in y_labels] == ["0", "1e-05", "0.001", "10000"]


def test_diverged_cells_are_marked_and_listed_with_their_reason(
    finished: tuple[StudyConfig, Path, Path],
) -> None:
    config, root, page_path = finished
    study = load(config, root)
    trials = trials_frame(record_of(study, config))
    grid = balance_grid(
        runs_frame(record_of(study, config)), "val_accuracy", trials=trials, axes=grid_axes(config)
    )
    diverged = grid[grid["status"] == "diverged"]
    assert sorted(diverged.index) == [
        (size, 1.0, 1e4, dropout) for size in sorted(BATCH_SIZES) for dropout in sorted(DROPOUTS)
    ]
    assert diverged["mean"].isna().all()
    for size, ax in facets(plot_balance(grid, "val_accuracy")).items():
        marked = [text for text in ax.texts if text.get_gid() == "empty-diverged"]
        assert len(marked) == len(DROPOUTS), size
        assert {facet_cells(ax)[(1e4, d)][0] for d in DROPOUTS} == {"diverged"}
    words = Page(page_path.read_text()).words()
    assert words.count("diverged at step") == 4
    assert "4 diverged" in words


def test_missing_cells_are_marked_with_a_dash() -> None:
    # One stored cell of four: seeds at 0.7 and 0.9 (mean 0.8, std 0.1), read through the
    # real record and frames; the grid's axes name three cells no trial reached.
    _, record = stored_cells({(32, 0.0, 0.0): (0.8, 0.1, 2)})
    grid = balance_grid(
        runs_frame(record),
        "val_accuracy",
        axes={
            "batch_size": [32],
            "lr_multiplier": [1.0],
            "weight_decay": [0.0, 1e-4],
            "dropout": [0.0, 0.5],
        },
    )
    assert grid["status"].value_counts().to_dict() == {"missing": 3, "done": 1}
    ax = next(iter(facets(plot_balance(grid, "val_accuracy")).values()))
    cells = facet_cells(ax)
    assert cells[(0.0, 0.0)] == [format_cell(0.8, 0.1, 2)]
    for key in [(0.0, 0.5), (1e-4, 0.0), (1e-4, 0.5)]:
        assert cells[key] == ["\u2014"]
    assert len([t for t in ax.texts if t.get_gid() == "empty-missing"]) == 3
    assert sum(p.get_hatch() is not None for p in ax.patches) == 3


def test_best_cell_is_outlined_and_the_verdict_names_it(
    finished: tuple[StudyConfig, Path, Path],
) -> None:
    config, root, page_path = finished
    study = load(config, root)
    record = record_of(study, config)
    grid = balance_grid(
        runs_frame(record),
        "val_accuracy",
        trials=trials_frame(record),
        axes=grid_axes(config),
    )
    noise = analyse_noise(record)
    assert noise is not None  # every run kept its per-example correctness
    verdict = balance_verdict(grid, noise=noise)
    best = grid["mean"].idxmax()
    assert verdict.best is not None and verdict.runner_up is not None
    assert grid_key(verdict.best._asdict()) == best
    assert verdict.difference == pytest.approx(
        grid["mean"].max() - grid["mean"].nlargest(2).iloc[1]
    )
    assert {effect.name for effect in verdict.effects} == {"batch_size", "weight_decay", "dropout"}
    close = [grid_key(cell.params) for cell in noise.indistinguishable]
    assert close[0] == best
    figure = plot_balance(grid, "val_accuracy", chosen=best, indistinguishable=close)
    marks: dict[str, list[int]] = {"chosen": [], "indistinguishable": []}
    for size, ax in facets(figure).items():
        for patch in ax.patches:
            marks.get(str(patch.get_gid()), []).append(size)
    assert marks["chosen"] == [best[0]]
    assert sorted(marks["indistinguishable"]) == sorted(size for size, *_ in close[1:])
    words = Page(page_path.read_text()).words()
    assert all(sentence in words for sentence in verdict.sentences)
    assert "cannot be told apart from it" in words or "worse beyond noise" in words
    assert "Tests of no effect" in words


def test_page_is_self_contained(finished: tuple[StudyConfig, Path, Path]) -> None:
    _, root, page_path = finished
    assert page_path == root / "grid" / "index.html"
    text = page_path.read_text()
    page = Page(text)
    images = page.images()
    assert len(images) >= 9  # range test, schedule, 3 heatmaps, batch sizes, test, importances,
    # learning curves
    assert all(src.startswith("data:image/png;base64,") for src in images)
    for _, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"^\s*(https?:)?//", value), f"{name}={value!r} loads remotely"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", text)
    assert [tag for tag, _ in page.tags if tag in ("script", "link", "iframe")] == []


def test_page_shows_the_setup_range_test_and_test_comparison(
    finished: tuple[StudyConfig, Path, Path],
) -> None:
    config, root, page_path = finished
    words = Page(page_path.read_text()).words()
    for fact in (
        "digits",
        "mlp",
        "sgd (momentum 0.9)",
        "coupled L2",
        "three_phase=True",
        f"optuna {optuna.__version__}",
        "12 complete",
        "Super-convergence is",
        "Chosen: test accuracy",
        "Baseline: test accuracy",
        "fANOVA",
    ):
        assert fact in words, fact
    max_lr = load(config, root).user_attrs["max_lr"]
    for size, lr in max_lr.items():
        assert f"{lr:.3g} at {size}" in words


def partial_study(root: Path, name: str, *, train_trials: int, running: bool) -> StudyConfig:
    """A grid study stopped part-way: some cells trained, one trial running, the rest queued."""
    config = study_config(
        name,
        seeds=1,
        baseline=None,
        train={"max_lr": 0.1},
        search={"weight_decay": [0.0, 1e-3], "dropout": [0.0, 0.2], "batch_size": [64]},
    )
    study = create_or_resume(config, storage_url(config, None, root))
    if train_trials:
        from balance.data import load_dataset

        data = load_dataset("digits")
        max_lrs = fix_max_lrs(study, config, data).max_lrs
        enqueue_missing_cells(study, config)
        study.optimize(Objective(config, data, max_lrs), n_trials=train_trials)
    else:
        enqueue_missing_cells(study, config)
    if running:
        study.ask()  # takes the next queued cell: RUNNING, as under a live worker
    return config


def test_partial_running_study_builds_and_marks_running_and_queued_cells(
    tmp_path: Path,
) -> None:
    config = partial_study(tmp_path, "partial", train_trials=2, running=True)
    page = Page(build_report(config, root=tmp_path).read_text())
    words = page.words()
    assert "2 complete" in words and "1 running" in words and "1 queued" in words
    assert page.images()
    study = load(config, tmp_path)
    grid = balance_grid(
        runs_frame(record_of(study, config)),
        "val_accuracy",
        trials=trials_frame(record_of(study, config)),
        axes=grid_axes(config),
    )
    assert sorted(grid["status"]) == ["done", "done", "queued", "running"]
    ax = next(iter(facets(plot_balance(grid, "val_accuracy")).values()))
    assert sorted(t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("empty")) == [
        "queued",
        "running",
    ]


def test_study_without_a_completed_trial_gives_a_page_that_says_so(tmp_path: Path) -> None:
    config = partial_study(tmp_path, "empty", train_trials=0, running=True)
    page = Page(build_report(config, root=tmp_path).read_text())
    words = page.words()
    assert "No completed trial yet" in words
    assert "needs at least 2 completed trials" in words
    assert "has not stored a max LR yet" in words
    assert all(src.startswith("data:") for src in page.images())


def test_missing_study_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no journal"):
        build_report(study_config("absent"), root=tmp_path)
    assert not (tmp_path / "absent").exists()


def test_bayesian_study_on_ranges_gives_a_non_empty_balance_figure(tmp_path: Path) -> None:
    config = study_config(
        "bayes",
        sampler="random",
        n_trials=4,
        seeds=1,
        baseline=None,
        train={"max_lr": 0.1},
        search={
            "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
            "dropout": {"low": 0.0, "high": 0.5},
            "batch_size": [64],
        },
    )
    sweep(config, root=tmp_path)
    study = load(config, tmp_path)
    trials = trials_frame(record_of(study, config))
    figure = plot_balance_scatter(trials, "val_accuracy", log_weight_decay=True)
    (ax,) = facets(figure).values()
    points = ax.collections[0].get_offsets()
    assert len(points) == 4
    assert ax.get_xscale() == "log"
    assert sorted(points[:, 0]) == sorted(trials["weight_decay"])
    page = Page(build_report(config, root=tmp_path).read_text())
    # Every figure a Bayesian study gets, by its alternative text; no range test ran
    # (max_lr is given) and there is no heatmap of a grid.
    alts = [attrs.get("alt") for tag, attrs in page.tags if tag == "img"]
    scatter = "scatter of trials over weight decay and dropout coloured by "
    assert alts == [
        "learning rate and momentum of every step, per batch size",
        *(scatter + METRIC_LABELS[metric] for metric in METRICS),
        "best validation accuracy and max LR per batch size",
        "test accuracy against iterations, chosen 1cycle run and baseline",
        "parameter importances for validation accuracy",
        "learning curves of the best trials",
    ]
    assert all(src.startswith("data:image/png;base64,") for src in page.images())
    assert "Bayesian study" in page.words()


def stored_grid(cells: dict[tuple[int, float, float], tuple[float, float, int]]) -> Any:
    """The real val_accuracy grid of a stored study whose cells reached these figures."""
    _, record = stored_cells(cells)
    return balance_grid(runs_frame(record), "val_accuracy", trials=trials_frame(record))


@pytest.mark.parametrize(
    ("runner_up", "within", "phrase"),
    [
        (0.89, True, "within seed noise"),
        (0.80, False, "beyond seed noise"),
        (0.90, True, "ties with it"),
    ],
)
def test_verdict_tells_seed_noise_from_a_real_difference(
    runner_up: float, within: bool, phrase: str
) -> None:
    grid = stored_grid(
        {
            (32, 0.0, 0.0): (0.90, 0.02, 3),
            (32, 1e-4, 0.0): (runner_up, 0.01, 3),
            (32, 1e-3, 0.5): (0.50, 0.01, 3),
        }
    )
    verdict = balance_verdict(grid)
    assert verdict.within_noise is within
    assert verdict.difference == pytest.approx(0.90 - runner_up)
    assert phrase in " ".join(verdict.sentences)
    assert verdict.best is not None and verdict.best.weight_decay == 0.0
    # Weight decay's marginal means: 0.90 at 0, runner_up at 1e-4, 0.50 at 1e-3.
    (weight_decay,) = [effect for effect in verdict.effects if effect.name == "weight_decay"]
    assert weight_decay.spread == pytest.approx(0.40)
    assert (weight_decay.best_value, weight_decay.worst_value) == (0.0, 1e-3)
    (dropout,) = [effect for effect in verdict.effects if effect.name == "dropout"]
    assert dropout.spread == pytest.approx((0.90 + runner_up) / 2 - 0.50)


def test_verdict_with_one_seed_says_noise_is_unknown() -> None:
    grid = stored_grid({(32, 0.0, 0.0): (0.90, 0.0, 1), (32, 1e-4, 0.0): (0.85, 0.0, 1)})
    verdict = balance_verdict(grid)
    assert verdict.within_noise is None
    assert "seed noise is unknown" in " ".join(verdict.sentences)


def test_verdict_warns_when_the_best_cell_lies_on_the_grid_edge() -> None:
    at_edge = stored_grid(
        {
            (32, 0.0, 0.0): (0.80, 0.01, 2),
            (32, 1e-4, 0.1): (0.85, 0.01, 2),
            (32, 1e-3, 0.0): (0.90, 0.01, 2),
            (32, 1e-4, 0.2): (0.70, 0.01, 2),
        }
    )
    inside = stored_grid(
        {
            (32, 0.0, 0.0): (0.80, 0.01, 2),
            (32, 1e-4, 0.1): (0.95, 0.01, 2),
            (32, 1e-3, 0.0): (0.90, 0.01, 2),
            (32, 1e-4, 0.2): (0.70, 0.01, 2),
        }
    )

    edge_words = " ".join(balance_verdict(at_edge).sentences)
    assert "The best weight decay, 0.001, is the largest in the grid" in edge_words
    assert "best dropout" not in edge_words  # dropout 0 is the natural floor, not an edge
    assert "in the grid: the balance may lie beyond" not in " ".join(
        balance_verdict(inside).sentences
    )
