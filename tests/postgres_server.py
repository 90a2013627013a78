"""A throwaway PostgreSQL server for the tests and the storage benchmark.

Uses the server binaries of an installed PostgreSQL: ``BALANCE_PG_BINDIR`` when set,
else ``pg_ctl`` on PATH, else the newest of Debian's (``/usr/lib/postgresql/<v>/bin``),
else those of the ``pgserver`` wheel from PyPI (in the ``test`` extra: PostgreSQL 16
built for manylinux, so a machine without Debian's package, or without root, still runs
the PostgreSQL tests; only its binaries are used, not its Python API). ``initdb`` into
a temporary folder, ``pg_ctl start`` on a free port of 127.0.0.1 with trust
authentication and its unix socket in the same folder, ``pg_ctl stop`` and removal at
the end. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (``runuser``), or ``nobody`` where there is no such user, and the
folder is handed to that user; the wheel's binaries are then copied where that user
can reach them (a virtual environment under ``/root`` is not).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BINDIR_ENV = "BALANCE_PG_BINDIR"
SERVER_USERS = ("postgres", "nobody")  # as root: the first that exists runs the server
START_TIMEOUT_S = 60


def system_bindir() -> Path | None:
    """The folder of an installed server's ``initdb`` and ``pg_ctl``, if any."""
    if os.environ.get(BINDIR_ENV):
        return Path(os.environ[BINDIR_ENV])
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def wheel_bindir() -> Path | None:
    """The binaries the ``pgserver`` wheel ships, if it is installed (it is not imported)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "pg_ctl").exists() else None


def find_bindir() -> Path | None:
    """Where the server binaries are: an installed PostgreSQL first, else the wheel's."""
    return system_bindir() or wheel_bindir()


def server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {SERVER_USERS} exists")


@cache
def _reachable_bindir(bindir: Path, uid: int) -> Path:
    """``bindir``, or a copy of its installation readable by ``uid`` when it is not."""
    check = ["runuser", "-u", pwd.getpwuid(uid).pw_name, "--", "test", "-x", str(bindir / "pg_ctl")]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return bindir
    # The same layout two levels up: the wheel's binaries find their shared libraries
    # by an rpath of $ORIGIN/../../../pgserver.libs.
    install, package = bindir.parent, bindir.parent.parent
    copy = Path(tempfile.mkdtemp(prefix="balance-pgbin-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    os.chmod(copy, 0o755)
    shutil.copytree(install, copy / package.name / install.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / libs.name, symlinks=True)
    return copy / package.name / install.name / bindir.name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def throwaway_server(*, durable: bool = False) -> Iterator[str]:
    """Start a fresh server; yield its admin URL (database ``postgres``); stop and delete it.

    Args:
        durable: keep PostgreSQL's defaults (fsync on). Off, commits skip fsync and
            full-page writes: right for tests, which throw the data away.
    """
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries (pip install pgserver, or postgresql)")
    owner = server_user()
    prefix = ["runuser", "-u", owner.pw_name, "--"] if owner else []
    root = Path(tempfile.mkdtemp(prefix="balance-pg-"))
    if owner:
        bindir = _reachable_bindir(bindir, owner.pw_uid)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres"]
        subprocess.run(
            [*initdb, "--auth=trust", "--encoding=UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=root,  # the server user may not enter the caller's folder
        )
        options = f"-c listen_addresses=127.0.0.1 -k {root} -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for attempt in range(3):  # the free port can be taken between probe and start
            port = _free_port()
            start = [*pg_ctl, "-l", str(root / "server.log"), "-w", "-t", str(START_TIMEOUT_S)]
            started = subprocess.run(
                [*start, "-o", f"{options} -p {port}", "start"],
                capture_output=True,
                cwd=root,
                text=True,
            )
            if started.returncode == 0:
                break
            if attempt == 2:
                log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
                raise RuntimeError(f"pg_ctl start failed: {started.stderr}{log[-2000:]}")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, cwd=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def create_database(admin_url: str, database: str) -> str:
    """Create an empty database (the role needs CREATEDB); return its URL."""
    import psycopg2

    with _autocommit(admin_url, psycopg2) as cursor:
        cursor.execute(f'CREATE DATABASE "{database}"')
    return with_database(admin_url, database)


def drop_database(admin_url: str, database: str) -> None:
    """Drop a database, closing the connections still open to it."""
    import psycopg2

    with _autocommit(admin_url, psycopg2) as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextmanager
def _autocommit(url: str, psycopg2: object) -> Iterator[object]:
    connection = psycopg2.connect(url, connect_timeout=10)  # type: ignore[attr-defined]
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()
