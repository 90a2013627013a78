"""The tests' own PostgreSQL server (tests/postgres_server.py) where a fresh machine puts it.

As root, the server runs as another user, who cannot reach binaries in a 0700 folder
(a clone and its venv under /root): they are copied, with the wheel's shared libraries,
to where that user can, and the server starts from a folder it cannot enter either.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg2
import pytest
from postgres_server import find_bindir, server_user, throwaway_server

pytestmark = pytest.mark.postgres


def test_a_server_starts_from_binaries_its_user_cannot_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = find_bindir()
    assert bindir is not None, "no PostgreSQL binaries (pip install pgserver)"
    install = bindir.parent
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(install.parent, private / install.parent.name, symlinks=True)
    libs = install.parent.parent / f"{install.parent.name}.libs"
    if libs.is_dir():  # the pgserver wheel's shared libraries, found by rpath
        shutil.copytree(libs, private / libs.name, symlinks=True)
    monkeypatch.setenv(
        "BALANCE_PG_BINDIR", str(private / install.parent.name / install.name / "bin")
    )
    monkeypatch.chdir(private)  # the caller's folder: closed to the server's user too
    owner = server_user()
    assert (owner is None) == (os.geteuid() != 0)
    with throwaway_server() as url:
        connection = psycopg2.connect(url, connect_timeout=10)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_user, 1 + 1")
                assert cursor.fetchone() == ("postgres", 2)
        finally:
            connection.close()
