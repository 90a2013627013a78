"""The stacked model and optimizer under :mod:`balance.packed`: K members as one.

``StackedModel`` holds K same-architecture networks as stacked tensors (``(K, ...)``,
:func:`torch.func.stack_module_state`). The built-in ``mlp`` and ``cnn1d`` run as a
:class:`balance.packed_layers.LayerProgram` (one batched kernel a layer); other
models run with :func:`torch.func.functional_call` under :func:`torch.vmap`, every
``nn.Dropout`` swapped for :class:`MemberDropout`. Either way BatchNorm's running
statistics are stacked buffers, updated in place per member, and dropout masks come
from one generator per member drawn exactly as ``nn.Dropout`` draws them alone
(``empty_like(x).bernoulli_(1 - p)``, then ``/ (1 - p)``; nothing for ``p = 0``), so
on CPU a member's masks are the masks of its solo run. ``StackedOptimizer`` is SGD
(momentum, nesterov), Adam or AdamW as :mod:`torch.optim` computes them, on stacked
tensors with a weight-decay vector.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from balance.config import TrainConfig
from balance.optim import parameter_groups
from balance.packed_layers import compile_layers

ADAM_EPS = 1e-8  # torch.optim.Adam's default, which build_optimizer keeps


class MemberDropout(nn.Module):
    """``nn.Dropout`` whose mask for each member comes from ``masks`` (drawn per member).

    ``member`` is a buffer holding each member's index, mapped over by vmap: indexing
    the unbatched ``(K, ...)`` masks with it hands every member its own row.
    """

    def __init__(self, masks: Callable[[torch.Size], Tensor | None]) -> None:
        super().__init__()
        self.masks = masks
        self.member: Tensor
        self.register_buffer("member", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        masks = self.masks(x.shape)  # x.shape is one member's shape under vmap
        return x if masks is None else x * masks[self.member]


class MaskSource:
    """Dropout masks of K members, each from its own generator, in the solo draw order."""

    def __init__(self, rates: Sequence[float], generators: Sequence[torch.Generator]) -> None:
        self.rates = list(rates)
        self.generators = list(generators)

    def keep(self, members: Sequence[int]) -> None:
        """Keep only ``members`` (indices into the current members), in that order."""
        self.rates = [self.rates[i] for i in members]
        self.generators = [self.generators[i] for i in members]

    def __call__(self, shape: torch.Size) -> Tensor | None:
        if not any(self.rates):
            return None
        device = self.generators[0].device
        rows = []
        for rate, generator in zip(self.rates, self.generators, strict=True):
            if rate == 0.0:  # F.dropout draws nothing at p = 0
                rows.append(torch.ones(shape, device=device))
            else:
                noise = torch.empty(shape, device=device).bernoulli_(1 - rate, generator=generator)
                rows.append(noise.div_(1 - rate))
        return torch.stack(rows)


def _swap_dropout(module: nn.Module, masks: MaskSource) -> list[str]:
    """Replace every ``nn.Dropout`` under ``module`` by a :class:`MemberDropout`; their names."""
    names = []
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.Dropout):
            parent_name, _, attribute = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            setattr(parent, attribute, MemberDropout(masks))
            names.append(name)
    return names


class StackedModel:
    """K networks of one architecture as stacked parameters and buffers, run under vmap."""

    def __init__(
        self,
        networks: Sequence[nn.Module],
        dropout: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> None:
        params, buffers = stack_module_state(list(networks))
        self.params = {name: value.detach().requires_grad_() for name, value in params.items()}
        self.buffers = {name: value.detach() for name, value in buffers.items()}
        self.masks = MaskSource(dropout, generators)
        self.program = compile_layers(networks[0])
        self.dropout_layers: list[str] = []
        if self.program is None:  # vmap over functional_call runs the members
            self.base = copy.deepcopy(networks[0]).to("meta")
            self.dropout_layers = _swap_dropout(self.base, self.masks)
            self._set_members(len(networks))
            self.vmapped_train = torch.vmap(self._call, in_dims=(0, 0, 0), randomness="same")

    @property
    def size(self) -> int:
        """Members in the pack now."""
        return len(self.masks.rates)

    def _set_members(self, count: int) -> None:
        device = next(iter(self.params.values())).device
        members = torch.arange(count, device=device)
        for name in self.dropout_layers:
            self.buffers[f"{name}.member"] = members

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def forward_train(self, x: Tensor) -> Tensor:
        """Logits ``(K, B, C)`` of members' own batches ``x`` ``(K, B, ...)``, training mode."""
        if self.program is not None:
            return self.program(self.params, self.buffers, x, training=True, masks=self.masks)
        self.base.train()
        return self.vmapped_train(self.params, self.buffers, x)

    def keep(self, members: Sequence[int]) -> None:
        """Keep only ``members`` (indices into the current members), in that order."""
        index = torch.tensor(list(members), device=next(iter(self.params.values())).device)
        self.params = {
            name: value.detach()[index].requires_grad_() for name, value in self.params.items()
        }
        self.buffers = {name: value[index] for name, value in self.buffers.items()}
        self.masks.keep(members)
        self._set_members(len(members))

    def member_state(self, member: int) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` of one member's parameters and buffers (dropout indices left out)."""
        for name, value in [*self.params.items(), *self.buffers.items()]:
            if not name.endswith(".member") or name.rpartition(".")[0] not in self.dropout_layers:
                yield name, value[member].detach()


def load_member(network: nn.Module, state: Iterator[tuple[str, Tensor]]) -> nn.Module:
    """Copy one member's tensors into ``network`` (its own solo-built module) and return it."""
    with torch.no_grad():
        targets = dict(network.named_parameters()) | dict(network.named_buffers())
        for name, value in state:
            targets[name].copy_(value)
    return network


def decayed_names(network: nn.Module, config: TrainConfig) -> set[str]:
    """Names of the parameters :func:`balance.optim.parameter_groups` puts in the decayed group."""
    groups = parameter_groups(network, 1.0, config.decay_norm_and_bias)
    decayed = {id(parameter) for parameter in groups[0]["params"]}
    return {name for name, parameter in network.named_parameters() if id(parameter) in decayed}


class StackedOptimizer:
    """``torch.optim`` SGD / Adam / AdamW steps on stacked ``(K, ...)`` parameters.

    Weight decay is a per-member vector, on the parameters in ``decayed`` only,
    coupled (``grad += wd * w``) for sgd and adam, decoupled
    (``w *= 1 - lr * wd``) for adamw, as :mod:`balance.optim` documents. Momentum
    (beta1) is shared and passed to each :meth:`step`; so is the LR, a number, or a
    per-member vector where members have their own max LR.
    """

    def __init__(self, config: TrainConfig, weight_decay: Sequence[float], decayed: set[str]):
        self.kind = config.optimizer
        self.nesterov = config.nesterov
        self.decayed = decayed
        self.weight_decay = torch.tensor(list(weight_decay), dtype=torch.float64)
        self.decaying = bool(self.weight_decay.any())
        self.state: dict[str, list[Tensor]] = {}
        self.steps = 0

    def keep(self, members: Sequence[int]) -> None:
        """Keep only ``members``' rows of the weight decay and the optimizer state."""
        index = torch.tensor(list(members))
        self.weight_decay = self.weight_decay[index]
        self.decaying = bool(self.weight_decay.any())
        self.state = {
            name: [value[index.to(value.device)] for value in values]
            for name, values in self.state.items()
        }

    @torch.no_grad()
    def step(
        self, params: dict[str, Tensor], grads: Sequence[Tensor], lr: float | Tensor, beta: float
    ) -> None:
        """One update of every stacked parameter with its gradient (in ``params`` order).

        Per-member vectors (weight decay, a vector LR) are cast to the parameters' dtype
        and device once a step, then viewed per parameter.
        """
        self.steps += 1
        like = next(iter(params.values()))

        def cast(values: Tensor) -> Tensor:
            return values.to(device=like.device, dtype=like.dtype)

        step_lr = cast(lr) if isinstance(lr, Tensor) else lr
        decay: Tensor | None = None
        if self.decaying:  # adamw shrinks the weights; sgd and adam add wd * w to the gradient
            decay = cast(1 - lr * self.weight_decay if self.kind == "adamw" else self.weight_decay)
        for (name, param), grad in zip(params.items(), grads, strict=True):
            own = decay if name in self.decayed else None
            if self.kind == "sgd":
                self._sgd(name, param, grad, step_lr, beta, own)
            else:
                self._adam(name, param, grad, step_lr, beta, own)

    def _sgd(
        self,
        name: str,
        param: Tensor,
        grad: Tensor,
        lr: float | Tensor,
        momentum: float,
        decay: Tensor | None,
    ) -> None:
        # in place on the fresh gradient: a new (K, ...) tensor a step costs more than the math
        if decay is not None:  # grad.add(param, alpha=wd) of torch.optim.SGD, one wd per member
            grad.addcmul_(param, _rows(decay, param))
        if momentum != 0:
            if name not in self.state:
                self.state[name] = [grad.clone()]
            else:
                self.state[name][0].mul_(momentum).add_(grad)
            buf = self.state[name][0]
            grad = grad.add_(buf, alpha=momentum) if self.nesterov else buf
        if isinstance(lr, Tensor):
            param.addcmul_(grad, _rows(lr, param), value=-1)
        else:
            param.add_(grad, alpha=-lr)

    def _adam(
        self,
        name: str,
        param: Tensor,
        grad: Tensor,
        lr: float | Tensor,
        beta1: float,
        decay: Tensor | None,
    ) -> None:
        beta2 = 0.999  # build_optimizer's betas = (momentum, 0.999)
        if decay is not None and self.kind == "adamw":
            param.mul_(_rows(decay, param))  # decay holds 1 - lr * wd
        elif decay is not None:
            grad.addcmul_(param, _rows(decay, param))
        if name not in self.state:
            self.state[name] = [torch.zeros_like(param), torch.zeros_like(param)]
        exp_avg, exp_avg_sq = self.state[name]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**self.steps)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**self.steps) ** 0.5).add_(ADAM_EPS)
        if isinstance(step_size, Tensor):
            param.addcmul_(exp_avg / denom, _rows(step_size, param), value=-1)
        else:
            param.addcdiv_(exp_avg, denom, value=-step_size)


def _rows(values: Tensor, like: Tensor) -> Tensor:
    """A ``(K,)`` vector viewed to broadcast over ``like``'s ``(K, ...)`` rows."""
    return values.view((len(values),) + (1,) * (like.dim() - 1))
