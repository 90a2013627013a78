"""K members' forward pass as plain batched operations, for the layers the built-in
``mlp`` and ``cnn1d`` are made of.

:func:`torch.vmap` runs any functional model, but on CPU its batching rules cost more
than packing saves: a member's convolution becomes a grouped one (oneDNN's grouped
kernels run K groups about 10x slower than one), and every op pays the rule's
dispatch. Here each layer is one ordinary kernel over all members:

- ``Linear``: one :func:`torch.baddbmm` of the members' ``(K, B, F)`` activations;
- ``Conv1d``: im2col by strided slices, then one :func:`torch.bmm`, activations laid
  out ``(K, C, B, L)`` so that
- ``BatchNorm1d`` is one :func:`torch.nn.functional.batch_norm` over ``K * C``
  channels of a ``(1, K * C, B * L)`` view: each member's statistics over its own
  batch, running statistics updated in place in the stacked buffers;
- ``Dropout``: each member's mask from its own generator (:class:`MaskSource`).

:func:`compile_layers` turns an ``nn.Sequential`` of these layers (and ``ReLU``,
``Flatten``) into a :class:`LayerProgram`; anything else returns ``None`` and the
model runs under vmap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Masks = Callable[[torch.Size], Tensor | None]
"""Each member's dropout mask ``(K, *shape)`` for one member's activation shape."""


@dataclass(frozen=True)
class _Activations:
    """A stage's tensor in its layout: ``"sample"`` ``(K, B, ...)``, ``"conv"`` ``(K, C, B, L)``."""

    tensor: Tensor
    layout: str

    def samples(self) -> Tensor:
        """The tensor as ``(K, B, ...)``."""
        return self.tensor if self.layout == "sample" else _swap(self.tensor)

    def conv(self) -> Tensor:
        """The tensor as ``(K, C, B, L)``."""
        return self.tensor if self.layout == "conv" else _swap(self.tensor)


def _swap(x: Tensor) -> Tensor:
    """``(K, B, C, L)`` and ``(K, C, B, L)`` into each other (a view)."""
    return x.permute(0, 2, 1, 3)


@dataclass(frozen=True)
class _Step:
    prefix: str  # "<name>.": the module's name in the solo network, before its tensors'
    module: nn.Module


_SIMPLE = (nn.ReLU, nn.Flatten, nn.Dropout, nn.Linear)


def _supported(module: nn.Module) -> bool:
    if type(module) not in (*_SIMPLE, nn.Conv1d, nn.BatchNorm1d):  # subclasses may differ
        return False
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if isinstance(module, nn.Conv1d):
        return (
            module.groups == 1
            and module.dilation == (1,)
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
        )
    if isinstance(module, nn.BatchNorm1d):
        return module.affine and module.track_running_stats and module.momentum is not None
    return True


# Where each layer may stand: "input" (the raw (K, B, ...) batch), "conv" (after a
# Conv1d, before Flatten) or "dense" (after Flatten); and where it leaves the pass.
_STAGES = {
    "Conv1d": ({"input", "conv"}, "conv"),
    "BatchNorm1d": ({"conv"}, "conv"),
    "Flatten": ({"input", "conv", "dense"}, "dense"),
    "Linear": ({"dense"}, "dense"),
    "Dropout": ({"dense"}, "dense"),
}


def compile_layers(network: nn.Module) -> LayerProgram | None:
    """The stacked program of ``network`` when it is an ``nn.Sequential`` of supported
    layers (``Conv1d``, ``BatchNorm1d`` and ``ReLU`` on ``(C, L)`` inputs, then
    ``Flatten``, ``Linear``, ``ReLU``, ``Dropout``); ``None`` otherwise (vmap runs it)."""
    if type(network) is not nn.Sequential:
        return None
    steps, stage = [], "input"
    for name, module in network.named_children():
        kind = type(module).__name__
        if not _supported(module):
            return None
        if kind != "ReLU":
            allowed, stage_after = _STAGES[kind]
            if stage not in allowed:
                return None
            stage = stage_after
        steps.append(_Step(f"{name}.", module))
    return LayerProgram(steps)


class LayerProgram:
    """The forward pass of K stacked members, one batched kernel a layer."""

    def __init__(self, steps: Sequence[_Step]) -> None:
        self.steps = list(steps)

    def __call__(
        self,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        x: Tensor,
        *,
        training: bool,
        masks: Masks,
    ) -> Tensor:
        """Logits ``(K, B, C)`` of members' inputs ``x`` ``(K, B, ...)``."""
        h = _Activations(x, "sample")
        for step in self.steps:
            h = self._step(step, h, params, buffers, training, masks)
        return h.samples()

    def _step(
        self,
        step: _Step,
        h: _Activations,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        training: bool,
        masks: Masks,
    ) -> _Activations:
        module, prefix = step.module, step.prefix
        if isinstance(module, nn.ReLU):
            return _Activations(torch.relu(h.tensor), h.layout)
        if isinstance(module, nn.Flatten):
            samples = h.samples()
            return _Activations(samples.reshape(*samples.shape[:2], -1), "sample")
        if isinstance(module, nn.Dropout):
            samples = h.samples()
            drawn = masks(samples.shape[1:]) if training else None
            return h if drawn is None else _Activations(samples * drawn, "sample")
        if isinstance(module, nn.Linear):
            weight = params[prefix + "weight"].transpose(1, 2)
            bias = params.get(prefix + "bias")
            samples = h.samples()
            if bias is None:
                return _Activations(torch.bmm(samples, weight), "sample")
            return _Activations(torch.baddbmm(bias.unsqueeze(1), samples, weight), "sample")
        if isinstance(module, nn.Conv1d):
            return _Activations(_conv1d(h.conv(), params, prefix, module), "conv")
        assert isinstance(module, nn.BatchNorm1d)
        return _Activations(
            _batch_norm(h.conv(), params, buffers, prefix, module, training), "conv"
        )


class _Columns(torch.autograd.Function):
    """im2col of ``(K, C, B, L)`` inputs: ``(K, C, k, B, L_out)``, tap ``j`` in column ``j``.

    Its backward adds each tap's gradient into one zeroed buffer, where autograd's own
    (one zeroed input-sized tensor per strided slice, then their sum) moves k times the
    memory: at these sizes the step is bound by memory traffic, not arithmetic.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
        padded = F.pad(x, (padding, padding)) if padding else x
        length = (padded.shape[-1] - kernel) // stride + 1
        span = stride * (length - 1) + 1
        ctx.geometry = (padded.shape, kernel, stride, padding, span, x.shape[-1])
        return torch.stack([padded[..., j : j + span : stride] for j in range(kernel)], dim=2)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        shape, kernel, stride, padding, span, width = ctx.geometry
        padded = grad.new_zeros(shape)
        for j in range(kernel):
            padded[..., j : j + span : stride].add_(grad[:, :, j])
        return padded[..., padding : padding + width], None, None, None


def _conv1d(x: Tensor, params: dict[str, Tensor], prefix: str, module: nn.Conv1d) -> Tensor:
    """``nn.Conv1d`` of every member: ``x`` ``(K, C_in, B, L)`` to ``(K, C_out, B, L_out)``."""
    weight = params[prefix + "weight"]  # (K, C_out, C_in, k)
    members, c_out, c_in, kernel = weight.shape
    (stride,) = module.stride
    padding = module.padding[0]  # a tuple: _supported turned "same" and "valid" away
    assert isinstance(padding, int)
    columns = _Columns.apply(x, kernel, stride, padding)  # (K, C_in, k, B, L_out)
    batch, length = columns.shape[-2:]
    out = torch.bmm(
        weight.view(members, c_out, c_in * kernel), columns.view(members, -1, batch * length)
    )
    out = out.view(members, c_out, batch, length)
    bias = params.get(prefix + "bias")
    return out if bias is None else out + bias.view(members, c_out, 1, 1)


def _batch_norm(
    x: Tensor,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    prefix: str,
    module: nn.BatchNorm1d,
    training: bool,
) -> Tensor:
    """``nn.BatchNorm1d`` of every member on its own batch: ``(K, C, B, L)``."""
    members, channels = x.shape[:2]
    if training:
        buffers[prefix + "num_batches_tracked"].add_(1)
    out = F.batch_norm(
        x.reshape(1, members * channels, -1),
        buffers[prefix + "running_mean"].view(-1),
        buffers[prefix + "running_var"].view(-1),
        params[prefix + "weight"].view(-1),
        params[prefix + "bias"].view(-1),
        training,
        float(module.momentum or 0.0),
        module.eps,
    )
    return out.view(x.shape)
