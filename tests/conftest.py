"""Shared fixtures: tiny real data, an isolated cache, user plug-in modules, PostgreSQL."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from postgres_server import create_database, drop_database, find_bindir, throwaway_server

from balance.data import Dataset, load_dataset


def pytest_configure(config: pytest.Config) -> None:
    # The test machines share a couple of cores between workers: one torch thread each.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """A slice of scikit-learn's digits (8x8 images, 10 classes), loaded once.

    400 training, 100 validation and 100 test examples: enough for an MLP to
    learn well above chance in a few epochs, small enough to train in a blink.
    """
    full = load_dataset("digits", validation_fraction=0.2, split_seed=0)
    return replace(
        full,
        x_train=full.x_train[:400].contiguous(),
        y_train=full.y_train[:400].contiguous(),
        x_val=full.x_val[:100].contiguous(),
        y_val=full.y_val[:100].contiguous(),
        x_test=full.x_test[:100].contiguous(),
        y_test=full.y_test[:100].contiguous(),
    )


@pytest.fixture
def isolated_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``BALANCE_CACHE_DIR`` for tests that must not see the user's cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("BALANCE_CACHE_DIR", str(path))
    return path


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write Python source as an importable module and return its name.

    Each test gets its own module name, so ``sys.modules`` never hands a test
    another test's module; the module is forgotten again afterwards.
    """
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    count = 0

    def write(source: str) -> str:
        nonlocal count
        count += 1
        name = f"user_{tmp_path.name}_{count}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    yield write
    for key in [key for key in sys.modules if key.startswith(f"user_{tmp_path.name}_")]:
        del sys.modules[key]


POSTGRES_URL_ENV = "BALANCE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Admin URL of a PostgreSQL server for the whole session.

    ``BALANCE_TEST_POSTGRES_URL`` when set (its role needs CREATEDB); otherwise a
    throwaway server from an installed PostgreSQL's binaries or the ``pgserver``
    wheel's (tests/postgres_server.py), stopped and deleted at the end. Without any,
    the tests fail: a missing server must not pass unnoticed.
    """
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        yield url
        return
    if find_bindir() is None:
        message = (
            f"no PostgreSQL binaries (pip install pgserver, or apt-get install postgresql) "
            f"and no {POSTGRES_URL_ENV}"
        )
        pytest.fail(message, pytrace=False)
    with throwaway_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """URL of a fresh, empty database of its own, dropped after the test."""
    name = f"balance_test_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_server, name)
    yield url
    drop_database(postgres_server, name)
