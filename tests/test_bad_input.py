"""Every bad input gets one line naming the problem, exit code 2, and no change to any study.

The table below is the README's "Bad input" table; a test checks the two agree.
Each study file is named like an existing study (``kept``) whose storage lives in
the same ``--root``: a bad file must leave that study byte for byte as it was.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from study_files import ROOT, tiny_values, toml_text
from typer.testing import CliRunner

from balance.cli import app
from balance.config import StudyConfig, build
from balance.pipeline import preflight, prepare
from balance.study import run_worker

NAME = "kept"


class BadInput(NamedTuple):
    what: str  # as the README's table names it
    study: Callable[[Path], str | None]  # the file's text (None: no file) for a data folder
    message: str  # the one line balance prints, up to its first varying part
    commands: tuple[str, ...] = ("validate", "sweep")


def study(**overrides: Any) -> Callable[[Path], str]:
    return lambda folder: toml_text(tiny_values(NAME, **overrides))


def fashion_mnist(make_folder: bool) -> Callable[[Path], str]:
    def write(folder: Path) -> str:
        data = folder / "fashion-mnist"
        if make_folder:
            data.mkdir()
        train = {"data": "fashion-mnist", "data_path": str(data), "model": "convnet"}
        return toml_text(tiny_values(NAME, train=train))

    return write


class RunsACommand:
    """Pickles as a call of ``os.system``: what a crafted CIFAR-10 batch would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


def cifar_folder(batch: Callable[[Path], bytes]) -> Callable[[Path], str]:
    """A study of a CIFAR-10 folder whose batches are ``batch(folder)``."""

    def write(folder: Path) -> str:
        data = folder / "cifar"
        data.mkdir()
        for name in ("data_batch_1", "test_batch"):
            (data / name).write_bytes(batch(folder))
        train = {"data": "cifar10", "data_path": str(data), "model": "convnet"}
        return toml_text(tiny_values(NAME, train=train))

    return write


def runs_a_command(folder: Path) -> bytes:
    """A batch that runs ``touch {folder}/ran`` when plain pickle loads it."""
    return pickle.dumps({b"data": RunsACommand(f"touch {folder / 'ran'}"), b"labels": [0]}, 2)


crafted_cifar = cifar_folder(runs_a_command)
# numpy.ndarray((1000000, 3072)) called by the pickle itself: 3 GB from 25 bytes.
ALLOCATES = b"\x80\x02cnumpy\nndarray\nJ\x40\x42\x0f\x00M\x00\x0c\x86\x85R."
NESTED = [0]
for _ in range(30):  # 10^30 elements to walk, in a few hundred bytes
    NESTED = [NESTED] * 10


CASES = [
    BadInput("missing study file", lambda folder: None, "error: study: cannot read"),
    BadInput(
        "malformed TOML",
        lambda folder: 'name = "kept"\n[train\n',
        "error: study: {file} is not valid TOML: Expected ']' at the end of a table declaration",
    ),
    BadInput(
        "unknown data set",
        study(train={"data": "imagenet"}),
        "error: train.data: unknown data set 'imagenet'; use one of mnist1d, mnist1d-10k, digits,",
    ),
    BadInput(
        "unknown model",
        study(train={"model": "vgg"}),
        "error: train.model: unknown model 'vgg'; use one of mlp, cnn1d, convnet,",
    ),
    BadInput(
        "model 'module:function' that does not import",
        study(train={"model": "no_such_module:net"}),
        "error: model: cannot import 'no_such_module:net': No module named 'no_such_module'",
    ),
    BadInput(
        "unknown optimizer",
        study(train={"optimizer": "lion"}),
        "error: train.optimizer: Input should be 'sgd', 'adam' or 'adamw' (got 'lion')",
    ),
    BadInput(
        "unknown precision",
        study(train={"precision": "fp8"}),
        "error: train.precision: Input should be '32', 'bf16-mixed' or '16-mixed' (got 'fp8')",
    ),
    BadInput(
        "unknown sampler",
        study(sampler="cmaes"),
        "error: sampler: Input should be 'grid', 'tpe', 'gp' or 'random' (got 'cmaes')",
    ),
    BadInput(
        "pack neither a count nor 'auto'",
        study(pack="many"),
        "error: pack: must be an integer >= 1 or 'auto' (got 'many')",
    ),
    BadInput(
        "unknown pruner",
        study(pruner="asha"),
        "error: pruner: Input should be 'none', 'median' or 'hyperband' (got 'asha')",
    ),
    BadInput(
        "misspelt key",
        study(search={"wieght_decay": [0.0]}),
        "error: search.wieght_decay: Extra inputs are not permitted (got [0.0])",
    ),
    BadInput(
        "negative weight decay",
        study(search={"weight_decay": [-0.0001, 0.0]}),
        "error: search.weight_decay[0]: Input should be greater than or equal to 0 (got -0.0001)",
    ),
    BadInput(
        "infinite weight decay",
        study(search={"weight_decay": [math.inf, 0.0]}),
        "error: search.weight_decay[0]: Input should be a finite number (got inf)",
    ),
    BadInput(
        "nan in a range bound",
        study(sampler="tpe", n_trials=4, search={"weight_decay": {"low": 0.0, "high": math.nan}}),
        "error: search.weight_decay.high: Input should be a finite number (got nan)",
    ),
    BadInput(
        "infinite max LR",
        study(train={"max_lr": math.inf}),
        "error: train.max_lr: Input should be a finite number (got inf)",
    ),
    BadInput(
        "infinite LR factor",
        study(search={"lr_multiplier": [1.0, math.inf]}),
        "error: search.lr_multiplier[1]: Input should be a finite number (got inf)",
    ),
    BadInput(
        "infinite range-test end LR",
        study(range_test={"end_lr": math.inf}),
        "error: range_test.end_lr: Input should be a finite number (got inf)",
    ),
    BadInput(
        "infinite weight decay in the baseline",
        study(baseline={"weight_decay": math.inf, "policy": "constant"}),
        "error: config: baseline.weight_decay: Input should be a finite number (got inf)",
    ),
    BadInput(
        "dropout of 1",
        study(search={"dropout": [0.0, 1.0]}),
        "error: search.dropout[1]: Input should be less than 1 (got 1.0)",
    ),
    BadInput(
        "negative dropout",
        study(search={"dropout": [-0.1]}),
        "error: search.dropout[0]: Input should be greater than or equal to 0 (got -0.1)",
    ),
    BadInput(
        "batch size larger than the training set",
        study(search={"batch_size": [64, 100000]}),
        "error: search.batch_size: 100000 is larger than the training split (1293 examples)",
    ),
    BadInput(
        "empty grid axis",
        study(search={"weight_decay": []}),
        "error: search.weight_decay: must list at least one value (got [])",
    ),
    BadInput(
        "nothing to search",
        lambda folder: toml_text({**tiny_values(NAME), "search": {}}),
        "error: search: search names none of weight_decay, dropout, batch_size",
    ),
    BadInput(
        "huge grid",
        study(
            search={
                "weight_decay": [i * 1e-6 for i in range(200)],
                "dropout": [i / 200 for i in range(100)],
            }
        ),
        "error: config: the search grid has 20000 cells (200 weight_decay x 100 dropout), "
        "more than 10000; list fewer values or use sampler 'tpe' or 'random'",
    ),
    BadInput(
        "Bayesian search without n_trials",
        study(sampler="tpe"),
        "error: config: n_trials is required for sampler 'tpe'",
    ),
    BadInput(
        "baseline at a batch size stage 1 gives no max LR",
        study(baseline={"batch_size": 32, "policy": "constant"}, train={"max_lr": None}),
        "error: config: baseline needs a max_lr: stage 1 fixes one only at batch sizes [64], "
        "not at the baseline's 32",
    ),
    BadInput(
        "local data set without data_path",
        study(train={"data": "fashion-mnist"}),
        "error: train: data_path is required for data set 'fashion-mnist'",
    ),
    BadInput(
        "data_path that does not exist",
        fashion_mnist(make_folder=False),
        "error: data_path: {folder}/fashion-mnist is not a folder",
    ),
    BadInput(
        "data_path without the data files",
        fashion_mnist(make_folder=True),
        "error: data_path: missing file train-images-idx3-ubyte[.gz] in {folder}/fashion-mnist",
    ),
    BadInput(
        "CIFAR-10 batch crafted to run a command",
        crafted_cifar,
        "error: data_path: {folder}/cifar/data_batch_1 is not a CIFAR-10 python batch: "
        "it asks for posix.system, which no data batch holds; nothing in it was run",
    ),
    BadInput(
        "CIFAR-10 batch crafted to allocate gigabytes",
        cifar_folder(lambda folder: ALLOCATES),
        "error: data_path: {folder}/cifar/data_batch_1 is not a CIFAR-10 python batch: "
        "it calls numpy.ndarray((1000000, 3072),) itself, which NumPy's pickles never do",
    ),
    BadInput(
        "CIFAR-10 labels nested to take forever",
        cifar_folder(
            lambda folder: pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": NESTED})
        ),
        "error: data_path: {folder}/cifar/data_batch_1 is not a CIFAR-10 python batch "
        "(b'labels' is no list of 0-9)",
    ),
    BadInput(
        "data plugin from the standard library",
        study(train={"data": "os:system", "data_path": "/tmp"}),
        "error: data: 'os:system' is in the standard library; a plugin must be a function of "
        "your own module (a study file's plugins run as code: use only files whose plugins "
        "you trust)",
    ),
    BadInput(
        "study name reused with a different space",
        study(search={"weight_decay": [0.0, 1e-3], "dropout": [0.0, 0.3]}),
        "error: study: 'kept' in this storage was made with a different search; "
        "use a new study name or the original file",
        commands=("sweep", "report"),  # a report from another space would show wrong axes
    ),
]


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding a study named ``kept``: 4 cells, all trained."""
    root = tmp_path_factory.mktemp("root")
    config = build(StudyConfig, tiny_values(NAME))
    url = str(root / NAME / "study.journal")
    prepare(config, url, preflight(config))
    run_worker(config, url, threads=1)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[case.what for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_study_alone(
    case: BadInput, existing: Path, tmp_path: Path
) -> None:
    path = tmp_path / "study.toml"
    text = case.study(tmp_path)
    if text is not None:
        path.write_text(text)
    before = snapshot(existing)
    assert before[f"{NAME}/study.journal"]
    expected = case.message.format(file=path, folder=tmp_path)
    for command in case.commands:
        on_storage = command in ("sweep", "report")
        args = [command, str(path)] + (["--root", str(existing)] if on_storage else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (command, result.output)
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith(expected), (command, line)
        assert snapshot(existing) == before, f"{command} changed the existing study"
    assert not (tmp_path / "ran").exists(), "a crafted data file ran its command"


def test_readme_lists_every_bad_input_with_its_message() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 2 and cells[1].startswith("`error: "):
            rows[cells[0]] = cells[1].strip("`")
    assert {case.what for case in CASES} <= set(rows)
    for case in CASES:
        # The README's line is the message the test asserts, with its own example names:
        # quoted values ('kept' there, 'mnist1d-cnn' here) and paths in place of {file}.
        def shape(text: str) -> str:
            return re.sub(r"'[^']*'", "'…'", text)

        fixed = re.split(r"\{file\}|\{folder\}", shape(case.message))
        assert all(part in shape(rows[case.what]) for part in fixed), case.what


def test_the_crafted_batch_does_run_its_command_under_plain_pickle(tmp_path: Path) -> None:
    # The CLI row above is only worth something if the file is a real attack.
    crafted_cifar(tmp_path)
    pickle.loads((tmp_path / "cifar" / "data_batch_1").read_bytes())
    assert (tmp_path / "ran").exists()
