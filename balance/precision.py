"""Mixed precision: the autocast context and the gradient scaler of a ``precision`` setting.

``"32"`` is plain fp32: no autocast at all (a ``nullcontext``) and no scaler, so the
hot loop runs exactly as without this module. ``"bf16-mixed"`` and ``"16-mixed"``
run forward and loss under ``torch.autocast``: matmuls and convolutions in the low
dtype, reductions such as the cross-entropy in fp32, the weights and the optimizer
state in fp32 throughout. ``"16-mixed"`` also scales the loss with a
``torch.amp.GradScaler``: float16 gradients underflow without it, and a step whose
scaled gradients overflow is skipped (the scale then halves). bfloat16 has fp32's
range and needs no scaler. Both work on CPU and CUDA (torch >= 2.3 autocasts
float16 on CPU too).
"""

from __future__ import annotations

import contextlib

import torch

from balance.config import ConfigError, Precision

DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""The autocast dtype of each mixed setting."""


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The context to run forward and loss in; reusable, enter it once per step.

    Raises:
        ConfigError: when torch has no autocast for ``device``'s type.
    """
    if precision == "32":
        return contextlib.nullcontext()
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(
            f"precision: {precision!r} needs autocast, which torch {torch.__version__} "
            f"does not have on device {device.type!r}; use precision '32'"
        )
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for ``"16-mixed"``; ``None`` (no scaling) otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "16-mixed" else None


def backward_and_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Backward and optimizer step, through ``scaler`` when there is one.

    With a scaler the step is skipped while the scaled gradients are not finite
    (the loss itself is finite: no divergence) and the scale is updated.
    """
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
