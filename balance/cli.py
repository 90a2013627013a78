"""The ``balance`` command line: parses, calls the Python API, prints.

Every configuration flag is derived from a field of :class:`~balance.config.TrainConfig`
or :class:`~balance.config.RangeTestConfig` (``weight_decay`` -> ``--weight-decay``; see
:mod:`balance.cli_flags`). Exit codes: 0 done, 1 the training run
diverged, 2 bad input (usage errors included), 3 a local sweep worker died, 130
interrupted.
"""

import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    NoReturn,
    cast,
)

import typer
from pydantic import BaseModel, ValidationError

from balance.cli_flags import (
    PROBED,
    RANGE,
    RANGE_IF_NEEDED,
    RUN,
    SCHEDULE,
    build_models,
    config_options,
)
from balance.cli_summary import print_summary
from balance.config import (
    PACK_SIZE_RULE,
    ConfigError,
    PackSize,
    RangeTestConfig,
    TrainConfig,
    format_validation_error,
    pack_size,
)
from balance.jsonable import write_json

if TYPE_CHECKING:
    from balance.config import StudyConfig
    from balance.range_test import RangeTestResult
    from balance.train import EpochMetrics

EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2
EXIT_WORKER_DIED = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="balance",
    help="Find the regularization balance of a network under super-convergence.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: brackets and quotes print as written
    pretty_exceptions_show_locals=False,  # locals hold tensors and whole data sets
)


# --- validation and errors ---------------------------------------------------------------


def _fail(lines: list[str], code: int) -> NoReturn:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(code)


def validate(values: dict[str, Any], *models: type[BaseModel]) -> list[Any]:
    """Build each model from the flags given for it; every problem is one line, exit 2."""
    built, problems = build_models(values, *models)
    if problems:
        _fail([f"error: {line}" for line in problems], EXIT_BAD_INPUT)
    return built


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors the library finds in user input (missing files, sizes) are one line, exit 2."""
    try:
        yield
    except ConfigError as error:
        _fail([f"error: {error}"], EXIT_BAD_INPUT)
    except ValidationError as error:
        _fail([f"error: {line}" for line in format_validation_error(error)], EXIT_BAD_INPUT)


# --- output ------------------------------------------------------------------------------

TABLE = ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "lr", "momentum")
"""Columns of the per-epoch table, named as the fields of ``EpochMetrics``."""


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _row(values: Iterable[Any]) -> str:
    return " ".join(
        f"{value:>12.4g}" if isinstance(value, float) else f"{value!s:>12}" for value in values
    )


def print_range_test(result: "RangeTestResult") -> None:
    stop = "" if result.diverged_at is None else f", diverged at step {result.diverged_at}"
    averaged = "" if result.repeats == 1 else f", mean of {result.repeats} sweeps"
    typer.echo(
        f"LR range test: {len(result.lrs)} steps at batch_size {result.batch_size}{averaged}{stop}"
    )
    typer.echo("suggestions (* = the rule that gave max_lr):")
    for rule, lr in result.suggestions.items():
        typer.echo(f"  {'*' if rule == result.rule else ' '} {rule:<9} {_number(lr)}")
    if result.rule_spread is not None:
        typer.echo(
            f"  onset and minimum lie {result.rule_spread:.1f}x apart (over 10x: distrusted)"
        )
    if result.probes:
        typer.echo(
            f"probes (complete runs; the best validation accuracy gives max_lr; the "
            f"curve said {_number(result.curve_max_lr)}):"
        )
        for probe in result.probes:
            shown = "diverged" if probe.val_accuracy is None else f"{probe.val_accuracy:.4f}"
            chosen = "*" if probe.lr == result.max_lr else " "
            typer.echo(f"  {chosen} lr {_number(probe.lr)}  val {shown}  ({probe.steps} steps)")
    source = f"rule {result.rule}" + (", then probes" if result.probes else "")
    typer.echo(f"max_lr: {_number(result.max_lr)} ({source})  min_lr: {_number(result.min_lr)}")
    typer.echo(f"super-convergence: {result.diagnostic.verdict}")
    typer.echo(f"  {result.diagnostic.explanation}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)


def run_range_test(
    train_config: TrainConfig, range_config: RangeTestConfig, out: Path
) -> "RangeTestResult":
    """Run the range test, print it, and write range_test.png and range_test.json into ``out``."""
    from tqdm import tqdm

    from balance.range_test import RangeTestWarning
    from balance.report import plot_range_test, save_figure
    from balance.train import choose_max_lr, probe_runs

    with (
        warnings.catch_warnings(),
        user_errors(),
        tqdm(total=probe_runs(range_config), desc="probes", unit="run", disable=None) as bar,
    ):
        warnings.simplefilter("ignore", RangeTestWarning)  # printed below from result.warnings
        result = choose_max_lr(train_config, range_config, progress=lambda _: bar.update())
    print_range_test(result)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(plot_range_test(result), out / "range_test.png")
    write_json(
        out / "range_test.json",
        {
            **result.to_dict(),
            "config": train_config.model_dump(mode="json"),
            "range_config": range_config.model_dump(mode="json"),
        },
    )
    typer.echo(f"wrote {out / 'range_test.png'} and {out / 'range_test.json'}")
    return result


# --- commands ----------------------------------------------------------------------------


@app.command("lr-find")
@config_options(RUN, PROBED, RANGE)
def lr_find(
    *,
    out: Annotated[Path, typer.Option(help="folder for range_test.png and range_test.json")] = Path(
        "reports/lr-find"
    ),
    **values: Any,
) -> None:
    """Run the LR range test and its probes: print every suggested max LR and the verdict."""
    train_config, range_config = validate(values, TrainConfig, RangeTestConfig)
    run_range_test(train_config, range_config, out)


@app.command("train")
@config_options(RUN, SCHEDULE, RANGE_IF_NEEDED)
def train_command(
    *,
    out: Annotated[Path, typer.Option(help="folder for train.json")] = Path("reports/train"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    **values: Any,
) -> None:
    """Train under the policy (1cycle by default); without --max-lr, run the LR range test first."""
    config, range_config = validate(values, TrainConfig, RangeTestConfig)
    from tqdm import tqdm

    from balance.train import train

    max_lr_source = "given"
    if config.max_lr is None:
        found = run_range_test(config, range_config, out)
        typer.echo(f"max_lr: not given; using {found.max_lr:.4g} from the LR range test")
        config = config.model_copy(update={"max_lr": found.max_lr})
        max_lr_source = f"range test, rule {found.rule}" + (", then probes" if found.probes else "")

    typer.echo(
        f"training {config.model} on {config.data}: policy {config.policy}, "
        f"max_lr {config.max_lr:.4g}, batch_size {config.batch_size}, "
        f"{config.epochs} epochs"
    )
    bar = tqdm(
        total=config.epochs,
        unit="epoch",
        desc="train",
        file=sys.stderr,
        leave=False,
        disable=quiet or not sys.stderr.isatty(),
    )

    def on_epoch(metrics: "EpochMetrics") -> None:
        if metrics.epoch == 1:
            tqdm.write(_row(TABLE), file=sys.stdout)
        tqdm.write(_row(getattr(metrics, name) for name in TABLE), file=sys.stdout)
        bar.update()

    with bar, user_errors():
        result = train(config, callback=on_epoch, evaluate_test=True)

    path = out / "train.json"
    write_json(
        path,
        {
            **result.to_dict(),
            "config": config.model_dump(mode="json"),
            "max_lr_source": max_lr_source,
        },
    )
    if result.diverged is not None:
        div = result.diverged
        _fail(
            [
                f"diverged: loss {div.loss} at step {div.step} (lr {div.lr:.4g}); "
                f"curves so far in {path}"
            ],
            EXIT_DIVERGED,
        )
    typer.echo(f"test_accuracy: {result.test_accuracy:.4f}  test_loss: {result.test_loss:.4g}")
    typer.echo(
        f"samples/s: {result.samples_per_second:,.0f} (training steps only)  "
        f"wall_time: {result.wall_time:.2f} s  steps: {result.steps}"
    )
    typer.echo(f"wrote {path}")


# --- studies -----------------------------------------------------------------------------

StudyArg = Annotated[Path, typer.Argument(help="study file (TOML), e.g. studies/mnist1d-cnn.toml")]
StorageOpt = Annotated[
    str | None,
    typer.Option(help="Optuna storage URL (postgresql://, sqlite://) or journal file path"),
]
RootOpt = Annotated[Path, typer.Option(help="folder of the study's results and report")]
DEFAULT_ROOT = Path("reports")


def _load_study(path: Path) -> "StudyConfig":
    from balance.study_file import load_study_file

    try:
        return load_study_file(path)
    except ConfigError as error:
        _fail([f"error: {problem}" for problem in error.problems], EXIT_BAD_INPUT)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar says what INFO would


@contextmanager
def _interruptible(study_name: str, url: str) -> Iterator[None]:
    """SIGTERM stops like Ctrl-C; either leaves completed trials stored and says how to go on.

    The running trial is recorded as failed (and its grid cell queued again) without
    Optuna's warning and traceback: the stop was asked for.
    """
    import logging
    import signal

    from balance.study import request_stop

    def stop(signum: int, frame: Any) -> None:
        logging.getLogger("optuna").setLevel(logging.ERROR)
        request_stop()  # at once, unless this process is claiming or recording a trial

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        _fail(
            [
                f"interrupted: completed trials of {study_name!r} are kept in {url}",
                "  re-run the same command to resume; `balance report` shows the partial study",
            ],
            EXIT_INTERRUPTED,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command("validate")
def validate_command(study_file: StudyArg) -> None:
    """Check a study file, its data and its model; print every problem, each naming its field."""
    config = _load_study(study_file)
    from balance.pipeline import preflight

    try:
        preflight(config)
    except ConfigError as error:
        _fail([f"error: {problem}" for problem in error.problems], EXIT_BAD_INPUT)
    kind = (
        f"{config.search.n_cells} grid cells"
        if config.sampler == "grid"
        else (f"{config.n_trials} {config.sampler} trials")
    )
    typer.echo(f"{study_file}: ok ({config.name}: {kind} x {config.seeds} seeds)")


def _pack_size(value: str | None) -> PackSize | None:
    if value is None:
        return None
    try:  # the study file's rule, on the flag's text
        return cast(PackSize, pack_size(int(value) if value.isdigit() else value))
    except ValueError:
        raise typer.BadParameter(f"{PACK_SIZE_RULE} (got {value!r})") from None


PackOpt = Annotated[
    Any,  # PackSize | None, which typer cannot read: _pack_size parses it
    typer.Option(
        parser=_pack_size,
        metavar="K|auto",
        help="queued grid trials a worker trains at once, packed; 'auto': chosen by a "
        "short throughput probe [default: the file's]",
    ),
]


@app.command("sweep")
def sweep_command(
    study_file: StudyArg,
    storage: StorageOpt = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="local worker processes [default: the file's]")
    ] = None,
    root: RootOpt = DEFAULT_ROOT,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    pack: PackOpt = None,
) -> None:
    """Run (or resume) a study: range test per batch size, the sweep, the test split, the report."""
    config = _load_study(study_file)
    from tqdm import tqdm

    from balance.pipeline import sweep
    from balance.storage import storage_url
    from balance.study import Progress

    _quiet_optuna()
    url = storage_url(config, storage, root)
    bar = tqdm(desc=config.name, unit="trial", file=sys.stderr, disable=quiet or None)

    def on_progress(progress: Progress) -> None:
        bar.total = progress.total
        bar.n = progress.done
        best = "-" if progress.best is None else f"{progress.best:.4f}"
        bar.set_postfix_str(f"best val {best}, running {progress.running}", refresh=False)
        bar.refresh()

    from balance.study import WorkerDied

    try:
        with bar, user_errors(), _interruptible(config.name, url):
            result = sweep(
                config,
                storage=url,
                workers=workers,
                pack=pack,
                root=root,
                on_progress=on_progress,
                study_file=study_file,
            )
    except WorkerDied as error:
        _fail([f"error: {error}"], EXIT_WORKER_DIED)
    print_summary(result.summary)
    typer.echo(f"wrote {result.out_dir}/trials.csv, summary.json and {result.report}")


@app.command("worker")
def worker_command(
    study_file: StudyArg,
    storage: Annotated[str, typer.Option(help="storage URL of the running study")],
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N")] = None,
    pack: PackOpt = None,
) -> None:
    """Join a study that `balance sweep` started (on any machine) and run trials until done."""
    config = _load_study(study_file)
    from balance.study import run_worker

    _quiet_optuna()
    with user_errors(), _interruptible(config.name, storage):
        ran = run_worker(config, storage, threads=threads, device=device, pack=pack)
    typer.echo(f"worker done: ran {ran} trials of {config.name!r}")


@app.command("report")
def report_command(
    study_file: StudyArg, storage: StorageOpt = None, root: RootOpt = DEFAULT_ROOT
) -> None:
    """Write reports/<study>/index.html from whatever the storage holds (partial studies too)."""
    config = _load_study(study_file)
    from balance.pipeline import report

    with user_errors():
        path = report(config, storage=storage, root=root, study_file=study_file)
    typer.echo(f"wrote {path}")


def main() -> None:
    """Entry point of the ``balance`` console script."""
    app(prog_name="balance")


if __name__ == "__main__":
    main()
