"""Where a study lives: a journal file by default, any Optuna storage URL otherwise."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from balance.config import ConfigError, StudyConfig

JOURNAL_NAME = "study.journal"
CONNECT_TIMEOUT_S = 10
HEARTBEAT_INTERVAL_S = 20
HEARTBEAT_GRACE_S = 60
MAX_RETRY = 2


def default_storage_url(study_name: str, root: Path = Path("reports")) -> str:
    """The embedded default: a journal file under ``root/<study>/`` (an absolute path)."""
    return str((root / study_name / JOURNAL_NAME).resolve())


def storage_url(config: StudyConfig, storage: str | None, root: Path) -> str:
    """The storage a study uses: the argument, the study file's, or the default journal file."""
    return storage or config.storage or default_storage_url(config.name, root)


def is_file_storage(url: str) -> bool:
    """Whether ``url`` names a journal file rather than a database URL."""
    return "://" not in url


def open_storage(url: str) -> BaseStorage:
    """Open an Optuna storage.

    A plain path is a journal file (safe for several local processes; Optuna's
    own advice over SQLite for parallel work). ``postgresql://``, ``mysql://``
    and ``sqlite://`` URLs open an RDB storage with a heartbeat, so a worker that
    dies mid-trial has that trial failed and retried by the next worker.

    Raises:
        ConfigError: the storage cannot be reached within ``CONNECT_TIMEOUT_S``.
    """
    if is_file_storage(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    connect_args: dict[str, object] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    elif url.startswith("sqlite"):
        connect_args["timeout"] = 60
    try:
        return RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args},
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=HEARTBEAT_GRACE_S,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=MAX_RETRY),
        )
    except ImportError as error:
        driver = url.split(":")[0]
        raise ConfigError(f"storage: the driver for {driver} is missing: {error}") from None
    except Exception as error:  # SQLAlchemy raises many kinds; all mean "cannot reach it"
        reason = str(error).splitlines()[0]
        raise ConfigError(f"storage: cannot reach {_redact(url)}: {reason}") from None


def _redact(url: str) -> str:
    # postgresql://user:secret@host/db -> postgresql://user:***@host/db
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("://", 1)[-1]:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{tail}"


def load_existing(study_name: str, storage: BaseStorage) -> optuna.Study:
    """Load a study that must already exist (workers join; they never create)."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ConfigError(
            f"study: no study named {study_name!r} in this storage; start it with `balance sweep`"
        ) from None
