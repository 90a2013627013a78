"""User extensions named as ``"package.module:function"`` (data sets and models)."""

from __future__ import annotations

import importlib
import re
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


def object_label(obj: object) -> str:
    """``"module:qualname"`` of a function or class, in the form a config field accepts.

    A nested or anonymous one (``outer.<locals>.f``, ``<lambda>``) keeps its module and
    gets its qualname with every run of other characters made one ``_``
    (``outer_locals_f``, ``lambda``): a label, not an import path.
    """
    module = getattr(obj, "__module__", None) or type(obj).__module__
    module = ".".join(_words(part) for part in module.split("."))
    return f"{module}:{_words(getattr(obj, '__qualname__', type(obj).__qualname__))}"


def _words(text: str) -> str:
    name = "_".join(word for word in re.split(r"\W+", text) if word) or "object"
    return f"_{name}" if name[0].isdigit() else name
