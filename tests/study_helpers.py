"""Building tiny study configs and reading their studies back, shared by the study tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from balance.config import StudyConfig, build
from balance.study import open_storage, storage_url


def study_config(values: dict[str, Any], **overrides: Any) -> StudyConfig:
    """``values`` with ``overrides`` applied (tables merged one level deep), validated."""
    merged = dict(values)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return build(StudyConfig, merged)  # type: ignore[no-any-return]


def load_study(config: StudyConfig, root: Path) -> optuna.Study:
    """The stored study of ``config`` under ``root`` (the default journal file)."""
    return optuna.load_study(
        study_name=config.name, storage=open_storage(storage_url(config, None, root))
    )
