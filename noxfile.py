"""Sessions: tests (the default run), e2e, bench, gpu, lint, typecheck.

    nox -s tests              # the default suite: everything not marked slow, PostgreSQL too
    nox -s tests -- -k cli    # arguments after -- go to pytest
    nox -s e2e                # the slow end-to-end runs
    nox -s gpu                # on a CUDA machine: the GPU check
    nox -s lint typecheck

Torch is installed on its own first, as ``torch==2.13.0``: pip's configuration finds
the local CPU wheel. Left to the package's ``torch>=2.4,<3`` range, pip could resolve
it to a multi-GB CUDA build from an index.
"""

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"  # keep envs between runs; every session re-installs, cheap
nox.options.sessions = ["tests", "lint", "typecheck"]

TORCH = "torch==2.13.0"
# The PostgreSQL tests belong to the default run: their fixture starts a throwaway
# server from the installed binaries (or uses BALANCE_TEST_POSTGRES_URL).
FAST = "not slow"
# bench: every benchmark's quick run is a default test, and two of them drive torch-lr-finder.
TEST_EXTRAS = "test,postgres,bench"


def install(session: nox.Session, extras: str = "") -> None:
    """Torch first (pinned to the local CPU wheel), then the package in editable mode."""
    session.install(TORCH)
    session.install("-e", f".[{extras}]" if extras else ".")


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run; no test collected (pytest exit 5) fails the session.

    One pytest-xdist process per core: most tests wait on subprocesses or train
    on one thread, so two processes on two cores cut the run by about a third.
    """
    install(session, TEST_EXTRAS)
    session.run("pytest", "-m", FAST, "-n", "auto", "--dist", "worksteal", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """Longer end-to-end runs (tests marked slow), the PostgreSQL load test among them."""
    install(session, TEST_EXTRAS)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every script in benchmarks/ (not _helpers), in name order; the table is rebuilt at the end.

    Each writes benchmarks/results/<name>.json; ``nox -s bench -- --quick`` is a fast smoke run.
    """
    install(session, "bench,postgres")  # postgres_load.py drives a real server
    scripts = sorted(p for p in Path("benchmarks").glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        session.log("no benchmark scripts in benchmarks/")
    for script in scripts:
        session.run("python", str(script), *session.posargs)
    # Every script rewrites results/README.md too; once more so a script that does not
    # use benchmarks/_common.py is in the table as well.
    session.run("python", "benchmarks/_common.py", *session.posargs)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The GPU check on a CUDA machine (scripts/gpu_check.py): range test, fp32 and bf16
    training against the CPU in the same run, a 2-worker study on the one device.

    Runs in the calling environment, which must hold a CUDA build of torch and balance's
    dependencies (a fresh venv would get the CPU pin). Exits 2, measuring nothing, where
    no CUDA device is found.
    """
    session.run("python", "scripts/gpu_check.py", *session.posargs, env={"PYTHONPATH": "."})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package (settings in pyproject.toml)."""
    install(session)
    # No pandas-stubs: they describe pandas 2 and reject valid pandas 3 indexing here.
    session.install("mypy", "types-tqdm")
    session.run("mypy", "balance", *session.posargs)
