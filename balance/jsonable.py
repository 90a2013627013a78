"""One JSON rule for everything balance writes: strict JSON, so NaN and infinity become null.

Optuna's journal, ``summary.json``, ``range_test.json`` and ``train.json`` are read by
strict parsers (browsers, ``jq``, the Optuna dashboard), which reject ``NaN``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``, tuples as lists and NumPy scalars as Python."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()  # numpy and torch scalars
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented strict JSON (see :func:`jsonable`), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(payload), indent=2, default=str) + "\n")
    return path
