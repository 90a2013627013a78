"""Reading CIFAR-10's python batches without running what a crafted file asks for.

The batches are pickles, and :func:`pickle.load` calls whatever a file names: a
batch shared with a data folder could run any command. :class:`BatchUnpickler`
resolves only the globals a real batch needs (NumPy's array and dtype
reconstruction; ``_codecs.encode``, which protocol 2 uses for bytes); dicts,
lists, bytes, str and ints need no global at all. Any other name stops the load
before anything is called; an array is only rebuilt the way NumPy writes one, from
bytes the file holds, so a small file cannot allocate a large one.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, cast

import numpy as np

# (module, name) pairs a CIFAR-10 batch can hold, written by NumPy 1 or 2 (``numpy.core``
# became ``numpy._core``) under pickle protocol 2 (Python 2's files) up to 5.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class UnsafeBatch(pickle.UnpicklingError):
    """The pickle asks for something no data batch does; it was refused, nothing was run."""


class ForbiddenGlobal(UnsafeBatch):
    """The pickle names a global that no data batch holds; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"it asks for {module}.{name}, which no data batch holds")
        self.module, self.name = module, name


class _NdarrayType:
    """What ``numpy.ndarray`` resolves to: an argument of ``_reconstruct``, never a call.

    Called by the pickle itself, the real class would allocate any shape it names
    (gigabytes from a few bytes) before a check could run.
    """

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args: object) -> None:
        raise UnsafeBatch(f"it calls numpy.ndarray{args!r} itself, which NumPy's pickles never do")


NDARRAY = _NdarrayType()


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """NumPy's ``_reconstruct`` as ``ndarray.__reduce__`` writes it: an empty array whose
    ``__setstate__`` then fills it from the pickle's own bytes (so no larger than the file)."""
    if subtype is not NDARRAY or shape != (0,):
        raise UnsafeBatch(f"it rebuilds an array as {subtype!r}{shape!r}, not as NumPy writes one")
    return np.ndarray((0,), dtype=np.dtype(cast(Any, dtype)))


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if a batch may hold it; else raise :class:`ForbiddenGlobal`."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenGlobal(module, name)
        if name == "ndarray":
            return NDARRAY
        if name == "_reconstruct":
            return _reconstruct
        return super().find_class(module, name)


def load_batch(path: Path) -> Any:
    """Unpickle ``path`` with :class:`BatchUnpickler` (byte strings kept as bytes)."""
    raw = path.read_bytes()
    return BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
