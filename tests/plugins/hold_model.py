"""An MLP whose training steps hold still while a hold file exists.

A test that stops a sweep mid-trial must not race the sweep to its end: with
``BALANCE_TEST_HOLD_DIR`` set, a training forward pass that finds ``hold`` in that
folder writes ``held-<pid>`` there and waits until the file is gone (or a stop
interrupts it). The test creates ``hold``, waits until every worker has written its
marker, so each is mid-trial with cells still queued, and then stops the sweep.
Without the variable it is a plain MLP.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import Tensor, nn

from balance.models import mlp

TIMEOUT_S = 300.0


class _HoldWhileFlagged(nn.Module):
    def __init__(self, inner: nn.Module, folder: Path) -> None:
        super().__init__()
        self.inner = inner
        self.folder = folder

    def forward(self, x: Tensor) -> Tensor:
        hold = self.folder / "hold"
        if self.training and hold.exists():
            (self.folder / f"held-{os.getpid()}").touch()
            deadline = time.monotonic() + TIMEOUT_S
            while hold.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("hold: the test never released or stopped this worker")
                time.sleep(0.05)  # polls the hold file: waits on the test, not on a clock
        return self.inner(x)


def model(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """The registry's MLP, held while the test's hold file exists (when one is configured)."""
    inner = mlp(input_shape, num_classes, dropout)
    folder = os.environ.get("BALANCE_TEST_HOLD_DIR")
    return inner if folder is None else _HoldWhileFlagged(inner, Path(folder))
