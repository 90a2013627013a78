"""Optimizers with weight decay on the right parameters.

Weight decay is PyTorch's per-step ``weight_decay``: an L2 term added to the
gradient for ``sgd`` and ``adam`` (coupled: Adam rescales it), decoupled for
``adamw`` (``w -= lr * weight_decay * w``). By default only tensors with two or
more dimensions (conv and linear weights) decay; biases and norm parameters do
not, which is what a weight-decay sweep should vary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from balance.config import TrainConfig

WEIGHT_DECAY_COUPLING = {"sgd": "coupled L2", "adam": "coupled L2", "adamw": "decoupled"}


def parameter_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if decay_norm_and_bias or parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer named in ``config`` at learning rate ``lr``."""
    groups = parameter_groups(model, config.weight_decay, config.decay_norm_and_bias)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov)
    betas = (config.momentum, 0.999)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
