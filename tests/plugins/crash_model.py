"""A model that kills its own process mid-training on a chosen build: a worker dying for real.

``BALANCE_TEST_CRASH_DIR`` holds a counter file; the build numbered
``BALANCE_TEST_CRASH_AT`` (1-based, counted across processes) returns a model
whose third forward pass sends SIGKILL to its own process.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from torch import Tensor, nn

from balance.models import mlp


class _KillOnForward(nn.Module):
    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner = inner
        self.after = after
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.training and self.calls > self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(x)


def model(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """An MLP; the configured build kills its process after a few training steps."""
    inner = mlp(input_shape, num_classes, dropout, width=32, depth=1)
    folder = Path(os.environ["BALANCE_TEST_CRASH_DIR"])
    counter = folder / "builds"
    builds = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(builds))
    if builds == int(os.environ.get("BALANCE_TEST_CRASH_AT", "0")):
        return _KillOnForward(inner, after=3)
    return inner
