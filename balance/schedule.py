"""Learning-rate and momentum schedules: the two 1cycle policies and three baselines.

``smith`` is Smith's 1cycle: linear, three phases (rise to ``max_lr`` over
``pct_start``, fall back over the same length, then anneal far below the start);
``fastai`` is the two-phase cosine variant. Both cycle momentum (SGD) or beta1
(Adam) inversely, between ``max_momentum`` and ``base_momentum``. Both are
:class:`torch.optim.lr_scheduler.OneCycleLR`; balance adds no schedule maths.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
)

from balance.config import ConfigError, TrainConfig

STEP_MILESTONES = (0.5, 0.75)  # baseline "step": LR x0.1 at half and at three quarters


class ScheduleTrace(NamedTuple):
    """LR and momentum (or beta1) of every optimizer step."""

    lr: list[float]
    momentum: list[float]


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int, max_lr: float
) -> LRScheduler:
    """The scheduler of ``config.policy``, to be stepped once per optimizer step.

    Raises:
        ConfigError: a 1cycle whose rise is shorter than two steps (OneCycleLR would
            never reach ``max_lr``, or divide by zero).
    """
    if config.one_cycle:
        rise = config.resolved_pct_start * total_steps
        if rise < 2:
            raise ConfigError(
                f"epochs: the {config.policy} 1cycle needs pct_start x steps >= 2, got "
                f"{config.resolved_pct_start} x {total_steps} = {rise:g}; "
                "train for more epochs or use a smaller batch_size"
            )
        return OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total_steps,
            pct_start=config.resolved_pct_start,
            anneal_strategy="linear" if config.policy == "smith" else "cos",
            three_phase=config.policy == "smith",
            div_factor=config.div_factor,
            final_div_factor=config.final_div_factor,
            cycle_momentum=True,
            base_momentum=config.base_momentum,
            max_momentum=config.max_momentum,
        )
    if config.policy == "step":
        milestones = [int(share * total_steps) for share in STEP_MILESTONES]
        return MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if config.policy == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    return LambdaLR(optimizer, lambda _: 1.0)


def current_momentum(optimizer: torch.optim.Optimizer) -> float:
    """Momentum of the first parameter group (SGD ``momentum`` or Adam ``betas[0]``)."""
    group = optimizer.param_groups[0]
    return float(group["betas"][0] if "betas" in group else group["momentum"])


def schedule_values(config: TrainConfig, total_steps: int, max_lr: float) -> ScheduleTrace:
    """The LR and momentum each step of a run will use, without training anything."""
    from balance.optim import build_optimizer

    model = torch.nn.Linear(1, 1)
    optimizer = build_optimizer(model, config, max_lr)
    scheduler = build_scheduler(optimizer, config, total_steps, max_lr)
    lrs, momenta = [], []
    for _ in range(total_steps):
        lrs.append(float(scheduler.get_last_lr()[0]))
        momenta.append(current_momentum(optimizer))
        optimizer.step()
        scheduler.step()
    return ScheduleTrace(lrs, momenta)
