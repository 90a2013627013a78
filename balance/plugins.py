"""User extensions named as ``"package.module:function"`` (data sets and models)."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable

from balance.config import ConfigError

# A study file's "module:function" is imported and called: from a file someone shared,
# it is code that runs. The standard library and the packages balance is built on hold
# no data set or model of the plugin form, but do hold calls that run commands or read
# pickles (os:system, pandas:read_pickle, torch:load): they are refused by name.
REFUSED_PACKAGES = frozenset(
    {"joblib", "matplotlib", "numpy", "optuna", "pandas", "scipy", "seaborn", "sklearn", "torch"}
)


def import_object(spec: str, field: str) -> Callable[..., object]:
    """Import ``"package.module:function"``; a failure is a :class:`ConfigError`.

    Raises:
        ConfigError: it does not import, is not callable, or lives in the standard
            library or one of :data:`REFUSED_PACKAGES` (a plugin is the user's own module).
    """
    module_name, _, attr = spec.partition(":")
    top = module_name.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in REFUSED_PACKAGES:
        where = "the standard library" if top in sys.stdlib_module_names else f"package {top!r}"
        raise ConfigError(
            f"{field}: {spec!r} is in {where}; a plugin must be a function of your own module "
            "(a study file's plugins run as code: use only files whose plugins you trust)"
        )
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
