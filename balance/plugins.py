"""User extensions named as ``"package.module:function"`` (data sets and models)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from balance.config import ConfigError


def import_object(spec: str, field: str) -> Callable[..., object]:
    """Import ``"package.module:function"``; a failure is a :class:`ConfigError`."""
    module_name, _, attr = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{field}: cannot import {spec!r}: {error}") from None
    if not callable(function):
        raise ConfigError(f"{field}: {spec!r} is not callable")
    return function
