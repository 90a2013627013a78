"""balance: the regularization balance of a network under super-convergence.

The public API, imported lazily so that ``balance --help`` does not pay for torch:

- :func:`train` and :class:`TrainConfig`: one run under 1cycle (or a baseline schedule).
- :func:`find_max_lr`, :func:`range_test` and :class:`RangeTestConfig`: the LR range test;
  :func:`choose_max_lr`: the test, then its probes (what ``balance lr-find`` does).
- :func:`load_study_file`, :func:`sweep`, :func:`run_worker`: Optuna studies.
- :func:`load_study_record` and :class:`StudyRecord`: what a study stores, read once.
- :func:`build_report` (of a record) and :func:`report` (of a stored study): the HTML report.
- :class:`StreamingData`: torch Datasets streamed through a DataLoader, for ``data=``
  (which also takes tensors; ``model=`` takes a factory: :mod:`balance.objects`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balance.config import (
        ConfigError,
        RangeTestConfig,
        StudyConfig,
        TrainConfig,
    )
    from balance.pipeline import load_study_record, preflight, report, sweep
    from balance.range_test import RangeTestResult, find_max_lr, range_test
    from balance.record import StudyRecord
    from balance.report import build_report
    from balance.streaming import StreamingData
    from balance.study import run_worker
    from balance.study_file import load_study_file
    from balance.train import TrainResult, choose_max_lr, train

_EXPORTS = {
    "ConfigError": "balance.config",
    "RangeTestConfig": "balance.config",
    "StudyConfig": "balance.config",
    "TrainConfig": "balance.config",
    "load_study_file": "balance.study_file",
    "load_study_record": "balance.pipeline",
    "preflight": "balance.pipeline",
    "report": "balance.pipeline",
    "sweep": "balance.pipeline",
    "RangeTestResult": "balance.range_test",
    "find_max_lr": "balance.range_test",
    "range_test": "balance.range_test",
    "build_report": "balance.report",
    "StudyRecord": "balance.record",
    "StreamingData": "balance.streaming",
    "run_worker": "balance.study",
    "TrainResult": "balance.train",
    "choose_max_lr": "balance.train",
    "train": "balance.train",
}

__all__ = [
    "ConfigError",
    "RangeTestConfig",
    "RangeTestResult",
    "StreamingData",
    "StudyConfig",
    "StudyRecord",
    "TrainConfig",
    "TrainResult",
    "build_report",
    "choose_max_lr",
    "find_max_lr",
    "load_study_file",
    "load_study_record",
    "preflight",
    "range_test",
    "report",
    "run_worker",
    "sweep",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'balance' has no attribute {name!r}")


class _Package(types.ModuleType):
    # Importing balance.train, balance.range_test or balance.report binds the submodule
    # here under the name of an exported function, so `from balance import train` gave
    # the module once anything had imported it. Leave such names to __getattr__: the
    # import system finds submodules in sys.modules, not through this attribute.
    def __setattr__(self, name: str, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and name in _EXPORTS):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
