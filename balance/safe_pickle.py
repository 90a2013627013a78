"""Reading CIFAR-10's python batches without running what a crafted file asks for.

The batches are pickles, and :func:`pickle.load` calls whatever a file names: a
batch shared with a data folder could run any command. :class:`BatchUnpickler`
resolves only the globals a real batch needs (NumPy's array and dtype
reconstruction; ``_codecs.encode``, which protocol 2 uses for bytes); dicts,
lists, bytes, str and ints need no global at all. Any other name stops the load
before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

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


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global that no data batch holds; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"it asks for {module}.{name}, which no data batch holds")
        self.module, self.name = module, name


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if a batch may hold it; else raise :class:`ForbiddenGlobal`."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenGlobal(module, name)
        return super().find_class(module, name)


def load_batch(path: Path) -> Any:
    """Unpickle ``path`` with :class:`BatchUnpickler` (byte strings kept as bytes)."""
    raw = path.read_bytes()
    return BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
