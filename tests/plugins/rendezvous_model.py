"""An MLP whose first training step in each process waits until N processes got there.

Tests that check work is shared among workers would otherwise race on start-up
times: on a loaded machine the first worker can empty the queue before the
second one has imported torch. With ``BALANCE_TEST_RENDEZVOUS_DIR`` set, each
process writes ``pid-<pid>`` there at its first training forward pass and waits
until ``BALANCE_TEST_RENDEZVOUS_COUNT`` such files exist, so every worker holds
a cell of its own. Without the variable it is a plain MLP.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import Tensor, nn

from balance.models import mlp

TIMEOUT_S = 120.0
_arrived: set[int] = set()  # pids of this process that passed the rendezvous (one, or a fork's)


class _WaitForOthers(nn.Module):
    def __init__(self, inner: nn.Module, folder: Path, count: int) -> None:
        super().__init__()
        self.inner = inner
        self.folder = folder
        self.count = count

    def forward(self, x: Tensor) -> Tensor:
        if self.training and os.getpid() not in _arrived:
            _arrived.add(os.getpid())
            (self.folder / f"pid-{os.getpid()}").touch()
            deadline = time.monotonic() + TIMEOUT_S
            while len(list(self.folder.glob("pid-*"))) < self.count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rendezvous: fewer than {self.count} processes arrived")
                time.sleep(0.05)  # polls the folder: waits on others' files, not on a clock
        return self.inner(x)


def model(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """The registry's MLP, behind a rendezvous of worker processes when one is configured."""
    inner = mlp(input_shape, num_classes, dropout)
    folder = os.environ.get("BALANCE_TEST_RENDEZVOUS_DIR")
    if folder is None:
        return inner
    return _WaitForOthers(inner, Path(folder), int(os.environ["BALANCE_TEST_RENDEZVOUS_COUNT"]))
