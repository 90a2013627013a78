"""``pack = "auto"``: how many trials a worker packs, from a short throughput probe.

The probe trains the study's own run (model, batch size, optimizer, threads) for a
few steps on a slice of the training split: once alone (:func:`balance.train.train`)
and once packed for each candidate K (K trials x seeds members), each timed twice
and the faster kept. K is the candidate with the most member-samples per second if
it beats one at a time by :data:`WIN`; otherwise 1. Whether packing wins depends on
the machine (on 2 CPU cores with one thread a worker it usually does not; with more
threads a worker, or on a GPU, it does), which is why it is measured, not assumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from balance.config import TrainConfig
from balance.data import Dataset
from balance.packed import can_pack, train_packed
from balance.train import train

CANDIDATES = (2, 4, 8, 16, 32)
"""Pack sizes (trials) the probe tries, up to the trials a pack can hold."""
PROBE_STEPS = 8
"""Training steps a probe run takes (one epoch of a slice of the training split)."""
PROBE_VALIDATION = 256
"""Validation examples a probe run evaluates (per-epoch validation is part of a trial)."""
WIN = 1.1
"""How much faster than one at a time a pack must run to be chosen."""


@dataclass(frozen=True)
class PackProbe:
    """What the probe measured and chose."""

    pack: int
    solo_rate: float  # member-samples per second one at a time
    packed_rates: dict[int, float]  # by K (trials)
    reason: str | None = None  # why it did not probe (cannot pack), if so

    def line(self) -> str:
        """One line for the worker's log."""
        if self.reason is not None:
            return f"pack auto: one at a time ({self.reason})"
        ratios = ", ".join(
            f"K={k} {rate / self.solo_rate:.2f}x" for k, rate in self.packed_rates.items()
        )
        return (
            f"pack auto: K = {self.pack} (member-samples/s packed / one at a time: {ratios}; "
            f"chosen above {WIN}x)"
        )


def _slice(data: Dataset, samples: int) -> Dataset:
    return replace(
        data,
        x_train=data.x_train[:samples],
        y_train=data.y_train[:samples],
        x_val=data.x_val[:PROBE_VALIDATION],
        y_val=data.y_val[:PROBE_VALIDATION],
    )


def _best_rate(run: Callable[[], int]) -> float:
    """Member-samples per second of the faster of two calls of ``run``."""
    rates = []
    for _ in range(2):
        started = time.perf_counter()
        samples = run()
        rates.append(samples / (time.perf_counter() - started))
    return max(rates)


def probe_pack_size(
    config: TrainConfig,
    data: Dataset,
    *,
    seeds: int,
    limit: int,
    candidates: Sequence[int] = CANDIDATES,
) -> PackProbe:
    """Choose how many trials of ``seeds`` runs each to pack for ``config``'s run.

    ``limit``: the most trials a pack can hold (the queued cells of one batch size).
    """
    reason = can_pack(config, data=data)
    if reason is not None:
        return PackProbe(1, 0.0, {}, reason)
    samples = min(len(data.y_train), PROBE_STEPS * config.batch_size)
    probe_data = _slice(data, samples)
    probe = config.model_copy(update={"epochs": 1})
    train(probe, data=probe_data)  # warm-up: first-call allocations, thread pools

    def solo() -> int:
        train(probe, data=probe_data)
        return samples

    solo_rate = _best_rate(solo)
    packed_rates: dict[int, float] = {}
    for k in [k for k in candidates if k <= limit]:
        members = [probe.model_copy(update={"seed": seed}) for seed in range(k * seeds)]

        def packed(members: list[TrainConfig] = members) -> int:
            train_packed(members, data=probe_data)
            return samples * len(members)

        packed_rates[k] = _best_rate(packed)
    best = max(packed_rates, key=packed_rates.__getitem__, default=1)
    chosen = best if packed_rates and packed_rates[best] >= WIN * solo_rate else 1
    return PackProbe(chosen, solo_rate, packed_rates)
