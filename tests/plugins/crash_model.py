"""A model that kills its own process mid-training on a chosen build: a worker dying for real.

``BALANCE_TEST_CRASH_DIR`` holds one empty file per build; the build numbered
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


def _next_build(folder: Path) -> int:
    """Claim the next build number; exclusive creation keeps concurrent workers apart."""
    number = 1
    while True:
        try:
            os.close(os.open(folder / f"build-{number}", os.O_CREAT | os.O_EXCL))
            return number
        except FileExistsError:
            number += 1


def model(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """An MLP; the configured build kills its process after a few training steps."""
    inner = mlp(input_shape, num_classes, dropout, width=32, depth=1)
    if _next_build(Path(os.environ["BALANCE_TEST_CRASH_DIR"])) == int(
        os.environ.get("BALANCE_TEST_CRASH_AT", "0")
    ):
        return _KillOnForward(inner, after=3)
    return inner
