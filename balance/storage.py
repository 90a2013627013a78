"""Where a study lives: a journal file by default, any Optuna storage URL otherwise.

A leaf: it knows URLs, drivers, timeouts and heartbeats, and imports no stage of balance.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from balance.config import ConfigError, StudyConfig

JOURNAL_NAME = "study.journal"
CONNECT_TIMEOUT_S = 10
CONNECT_TIMEOUT_ENV = "BALANCE_CONNECT_TIMEOUT_S"  # overrides it (seconds, an integer >= 1)
# A running trial writes a heartbeat every HEARTBEAT_INTERVAL_S seconds; one silent for
# HEARTBEAT_GRACE_FACTOR intervals (60 s) belongs to a dead worker: the next worker to
# start a trial fails it and queues a copy, at most MAX_RETRY times per trial.
HEARTBEAT_INTERVAL_S = 20
HEARTBEAT_GRACE_FACTOR = 3
HEARTBEAT_ENV = "BALANCE_HEARTBEAT_S"  # overrides the interval (seconds, an integer >= 1)
MAX_RETRY = 2


def default_storage_url(study_name: str, root: Path = Path("reports")) -> str:
    """The embedded default: a journal file under ``root/<study>/`` (an absolute path)."""
    return str((root / study_name / JOURNAL_NAME).resolve())


def storage_url(config: StudyConfig, storage: str | None, root: Path) -> str:
    """The storage a study uses: the argument, the study file's, or the default journal file."""
    # An empty string (`--storage ""`) means "not given", as leaving the flag out does.
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

    The heartbeat interval is ``HEARTBEAT_INTERVAL_S`` seconds unless the environment
    variable ``BALANCE_HEARTBEAT_S`` sets another; the grace period is three intervals.
    A PostgreSQL server gets ``CONNECT_TIMEOUT_S`` (or ``BALANCE_CONNECT_TIMEOUT_S``)
    seconds to answer.

    Raises:
        ConfigError: the storage cannot be reached within the connect timeout.
    """
    if is_file_storage(url):
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    interval = _seconds(HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S)
    connect_args: dict[str, object] = {}
    engine_url = url
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = _seconds(CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT_S)
        engine_url = _with_postgres_driver(url)
    elif url.startswith("sqlite"):
        connect_args["timeout"] = 60
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                engine_url,
                engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args},
                heartbeat_interval=interval,
                grace_period=interval * HEARTBEAT_GRACE_FACTOR,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )
    except ImportError as error:
        driver = url.split(":")[0]
        hint = " (pip install 'balance[postgres]')" if driver.startswith("postgresql") else ""
        raise ConfigError(f"storage: the driver for {driver} is missing{hint}: {error}") from None
    except Exception as error:  # SQLAlchemy raises many kinds; all mean "cannot reach it"
        # "(psycopg2.OperationalError) connection to server ... failed: timeout expired"
        reason = re.sub(r"^\([\w.]+\) ", "", str(error).splitlines()[0])
        raise ConfigError(f"storage: cannot reach {_redact(url)}: {reason}") from None


def _seconds(variable: str, default: int) -> int:
    """A whole number of seconds from the environment, or ``default`` when unset."""
    value = os.environ.get(variable)
    if value is None:
        return default
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(f"{variable} must be a whole number of seconds >= 1, got {value!r}")
    return int(value)


def _with_postgres_driver(url: str) -> str:
    # SQLAlchemy 2.1 reads a plain postgresql:// as psycopg 3, 2.0 as psycopg2; use
    # whichever is installed, so the URL users write (and the dashboard reads) just works.
    scheme, sep, rest = url.partition("://")
    if "+" in scheme or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return f"{scheme}+psycopg2{sep}{rest}"
    return url


def _redact(url: str) -> str:
    # postgresql://user:secret@host/db -> postgresql://user:***@host/db
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("://", 1)[-1]:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{tail}"


def load_existing(study_name: str, storage: BaseStorage) -> optuna.Study:
    """Load a study that must already exist (workers and reports join; they never create).

    Raises:
        ConfigError: the storage holds no study of that name.
    """
    try:
        # Placeholders, set explicitly rather than Optuna's default TPE: whoever samples
        # from the study (run_worker) sets the study's own sampler and pruner first.
        return optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=optuna.pruners.NopPruner(),
        )
    except KeyError:
        raise ConfigError(
            f"study: no study named {study_name!r} in this storage; start it with `balance sweep`"
        ) from None


def open_existing(study_name: str, url: str) -> tuple[optuna.Study, BaseStorage]:
    """Open the storage at ``url`` and load a study that must exist there, with its storage.

    A journal path that does not exist is refused before it is created.

    Raises:
        ConfigError: no such journal file, or no study of that name in the storage.
    """
    if is_file_storage(url) and not Path(url).exists():
        raise ConfigError(
            f"study: no study named {study_name!r}: no journal at {url}; "
            "start it with `balance sweep`"
        )
    storage = open_storage(url)
    return load_existing(study_name, storage), storage


def has_heartbeat(storage: BaseStorage) -> bool:
    """Whether running trials in ``storage`` send heartbeats (database storages opened here).

    Journal files have none: a dead worker's trial there cannot be told from a live one.
    """
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of a study, through the public storage API.

    Optuna's ``FrozenTrial`` keeps the id private; storage methods that change a
    trial someone else is running (failing a dead worker's trial) need it.
    """
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


class Heartbeats:
    """Heartbeats for trials this process claimed with ``study.ask()`` (packed workers).

    ``study.optimize`` beats for its one trial itself; a worker that claims several
    trials and finishes them with ``study.tell`` beats for each here, every interval
    of the storage, through ``RDBStorage.record_heartbeat`` (public on the storage,
    though Optuna documents its heartbeat classes as internal). Journal files have no
    heartbeat: then this does nothing.
    """

    def __init__(self, storage: BaseStorage, study_name: str) -> None:
        self.storage = storage if has_heartbeat(storage) else None
        self.study_name = study_name
        self.ids: dict[int, int] = {}  # trial number -> storage id
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, number: int) -> None:
        """Beat for trial ``number`` from now on (one beat at once)."""
        storage = self.storage
        if not isinstance(storage, RDBStorage):
            return
        tid = trial_id(storage, self.study_name, number)
        storage.record_heartbeat(tid)
        with self.lock:
            self.ids[number] = tid
        if self.thread is None:
            self.thread = threading.Thread(target=self._beat, args=(storage,), daemon=True)
            self.thread.start()

    def remove(self, number: int) -> None:
        """Stop beating for trial ``number`` (it finished)."""
        with self.lock:
            self.ids.pop(number, None)

    def close(self) -> None:
        """Stop the beating thread."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _beat(self, storage: RDBStorage) -> None:
        interval = storage.get_heartbeat_interval() or HEARTBEAT_INTERVAL_S
        while not self.stopping.wait(interval):
            with self.lock:
                ids = list(self.ids.values())
            for tid in ids:
                storage.record_heartbeat(tid)
