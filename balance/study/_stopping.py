"""Stop requests (Ctrl-C, SIGTERM) that land only where a worker can hand its trial back.

A ``KeyboardInterrupt`` raised at an arbitrary bytecode can fall between Optuna
claiming a queued trial and the objective marking it as this worker's: that
trial is then failed (or left running) with nobody to queue its cell again.
So a worker defers stop requests while it claims and records trials, and takes
them at once only while it trains, the long part a user wants cut short.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class _StopState:
    deferring: bool = False  # inside stop_deferred() and not inside stop_allowed()
    pending: bool = False  # a request arrived while deferring


_state = _StopState()


def request_stop() -> None:
    """Ask this process to stop: raise ``KeyboardInterrupt`` now, or at the next safe point.

    Call it from a signal handler. Outside :func:`stop_deferred` it raises at once.
    """
    if _state.deferring:
        _state.pending = True
        return
    raise KeyboardInterrupt


def _take_pending() -> None:
    if _state.pending:
        _state.pending = False
        raise KeyboardInterrupt


@contextmanager
def stop_deferred() -> Iterator[None]:
    """Hold stop requests inside the block; one that arrived is raised when it ends.

    Nested in another deferred block, a held request stays held for the outer one.
    """
    outer = _state.deferring
    _state.deferring = True
    try:
        yield
    except BaseException:
        _state.pending = False  # the block's own error ends the work already
        raise
    finally:
        _state.deferring = outer
    if not outer:
        _take_pending()


@contextmanager
def stop_allowed() -> Iterator[None]:
    """Inside a deferred block, let stop requests through: a held one is raised on entry."""
    outer = _state.deferring
    _take_pending()
    _state.deferring = False
    try:
        yield
    finally:
        _state.deferring = outer
