"""Packed training: K runs that differ only in numbers, trained as one vectorized model.

Members share the data, the model's architecture, the batch size, the optimizer and
the schedule's shape; each has its own ``weight_decay``, ``dropout``, ``seed`` and
``max_lr`` (:data:`MEMBER_FIELDS`; a study's ``lr_multiplier``), its LR each step its
own schedule's (the momentum schedule does not depend on ``max_lr``). What each member
sees is what it would see alone (:func:`balance.train.train`):

- its parameters are built by :func:`balance.loop.prepare` for its seed;
- its batch order is its own ``torch.Generator().manual_seed(seed)``'s permutations,
  drawn as :func:`balance.data.epoch_batches` draws them (batches are gathered by index
  into a ``(K, B, ...)`` tensor);
- its dropout masks come from its own generator, started where the global generator
  stands after its model was built: on CPU the very masks of its solo run
  (:mod:`balance.packed_ops`); on CUDA (fused dropout, Philox) the same distribution only;
- the LR and momentum are :func:`balance.schedule.schedule_values` (its own OneCycleLR),
  the weight decay rule :func:`balance.optim.parameter_groups`'s.

The result is not bit for bit: a member's linear layers and convolutions run as
batched matrix products (:mod:`balance.packed_layers`; under vmap, grouped
convolutions), whose sums round differently (about 1e-7 relative per step).
Validation after each epoch runs on each member's own module, with the solo kernels.
``tests/test_packed.py`` holds members to their solo runs at a stated tolerance. A
member whose loss turns non-finite stops alone, at the end of the epoch, as a solo run
stops; ``mask`` can stop members after any epoch (pruning). A member that leaves the
pack is dropped from its tensors, so the others go faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from balance.config import BUILTIN_MODELS, ConfigError, TrainConfig
from balance.data import Dataset
from balance.loop import Divergence, EpochMetrics, evaluate, prepare
from balance.objects import DataArgument
from balance.packed_ops import StackedModel, StackedOptimizer, decayed_names, load_member
from balance.schedule import ScheduleTrace, schedule_values
from balance.streaming import StreamedSplits, StreamingData
from balance.train import TrainResult, finish_run

MEMBER_FIELDS = ("weight_decay", "dropout", "seed", "max_lr")
"""The fields members of one pack may differ in; every other field is shared."""

MemberMask = Callable[[dict[int, EpochMetrics]], Collection[int] | None]
"""Called after every epoch with the metrics of the members still training (by their
index in ``configs``); returns the indices that go on (``None``: all of them)."""


def can_pack(config: TrainConfig, *, data: DataArgument | None = None) -> str | None:
    """Why ``config`` cannot train as a packed member, in one line; ``None`` if it can.

    ``data`` is the Python API's data object, when one stands in for ``config.data``.
    BatchNorm packs (its running statistics are stacked buffers); user models do not,
    since nothing says they are functional (a ``F.dropout`` in a ``forward`` would draw
    one mask for all members).
    """
    if config.model not in BUILTIN_MODELS:
        return f"model: {config.model!r} is a user model; only built-in models pack"
    if config.max_lr is None:
        return "max_lr: members need a fixed max_lr (the range test runs alone)"
    if config.precision != "32":
        return f"precision: {config.precision!r} trains one at a time; packing runs 32 only"
    if config.augment:
        return "augment: augmented runs train one at a time"
    if isinstance(data, StreamingData | StreamedSplits):
        return "data: streamed data sets train one at a time; packing needs in-memory tensors"
    return None


def pack_reason(configs: Sequence[TrainConfig], *, data: DataArgument | None = None) -> str | None:
    """Why ``configs`` cannot train as one pack, in one line; ``None`` if they can."""
    if not configs:
        return "configs: a pack needs at least one member"
    reason = next((r for c in configs if (r := can_pack(c, data=data)) is not None), None)
    if reason is not None:
        return reason
    shared = configs[0].model_dump(exclude=set(MEMBER_FIELDS))
    for config in configs[1:]:
        other = config.model_dump(exclude=set(MEMBER_FIELDS))
        differ = sorted(key for key in shared if shared[key] != other[key])
        if differ:
            return (
                f"{', '.join(differ)}: members of a pack may differ only in "
                f"{', '.join(MEMBER_FIELDS)}"
            )
    return None


@dataclass
class _Member:
    """What one member has gathered so far."""

    config: TrainConfig
    network: nn.Module  # its solo-built module; its tensors are copied back when it leaves
    trace: ScheduleTrace  # its own schedule (the momentum one is every member's)
    history: list[EpochMetrics]
    steps: int = 0
    train_time: float = 0.0
    diverged: Divergence | None = None


def _member_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Each member's mean cross-entropy ``(K,)`` of its logits ``(K, B, C)``."""
    losses = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return losses.view(targets.shape).mean(1)


def _evaluate(
    model: StackedModel, members: list[_Member], active: list[int], data: Dataset
) -> tuple[list[float], list[float]]:
    """Every active member's validation loss and accuracy, on its own solo-built module.

    Its tensors are copied back first; the solo kernels evaluate a member faster than
    the stacked forward does (no gradients, so no packing gain), with a solo run's sums.
    """
    losses, accuracies = [], []
    for row, i in enumerate(active):
        network = load_member(members[i].network, model.member_state(row))
        loss, accuracy = evaluate(network, data.x_val, data.y_val)
        losses.append(loss)
        accuracies.append(accuracy)
    return losses, accuracies


def _dropout_generator(device: torch.device, seed: int) -> torch.Generator:
    """The generator a solo run's dropout draws from, as it stands after the model was built."""
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        return generator
    return torch.Generator(device=device).manual_seed(seed)  # the same distribution only


def train_packed(
    configs: Sequence[TrainConfig],
    *,
    data: DataArgument | None = None,
    mask: MemberMask | None = None,
    evaluate_test: bool = False,
) -> list[TrainResult]:
    """Train ``configs`` as one packed model; one :class:`TrainResult` per config, in order.

    Each result is what :func:`balance.train.train` returns for that config (to the
    tolerance in the module's docstring): its epochs, LR and momentum traces,
    divergence, packed validation correctness and, with ``evaluate_test``, test
    figures. A member ``mask`` stopped has its epochs so far and no divergence.
    ``train_time`` is the time of the packed epochs the member took part in, so its
    ``samples_per_second`` is its own share; the pack's rate is their sum.

    Raises:
        ConfigError: the configs cannot pack (:func:`pack_reason`'s line).
    """
    reason = pack_reason(configs, data=data)
    if reason is not None:
        raise ConfigError(reason)
    started = time.perf_counter()
    members, generators = [], []
    resolved: DataArgument | None = data
    traces: dict[float, ScheduleTrace] = {}
    dataset: Dataset | None = None
    for config in configs:
        resolved, network, device = prepare(config, resolved)
        # first, before schedule_values builds (and initializes) a module of its own
        generators.append(_dropout_generator(device, config.seed))
        if not isinstance(resolved, Dataset):  # can_pack turned streamed data away
            raise ConfigError("data: packing needs in-memory tensors")
        dataset = resolved
        max_lr = float(config.max_lr or 0.0)
        if max_lr not in traces:
            steps = config.epochs * math.ceil(len(dataset.y_train) / config.batch_size)
            traces[max_lr] = schedule_values(config, steps, max_lr)
        members.append(_Member(config, network, traces[max_lr], []))
    if any(trace.momentum != members[0].trace.momentum for trace in traces.values()):
        raise ConfigError("max_lr: members' momentum schedules differ; they cannot pack")
    assert dataset is not None  # pack_reason turned an empty pack away
    first = configs[0]
    model = StackedModel([m.network for m in members], [c.dropout for c in configs], generators)
    decayed = decayed_names(members[0].network, first)
    optimizer = StackedOptimizer(first, [c.weight_decay for c in configs], decayed)
    _train(model, optimizer, members, dataset, mask)
    return [_result(member, dataset, started, evaluate_test) for member in members]


def _train(
    model: StackedModel,
    optimizer: StackedOptimizer,
    members: list[_Member],
    data: Dataset,
    mask: MemberMask | None,
) -> None:
    """The packed loop: every member's epochs, until each finishes, diverges or is masked."""
    first = members[0].config
    batch_size, n_train = first.batch_size, len(data.y_train)
    device = data.x_train.device
    orders = [torch.Generator(device=device).manual_seed(m.config.seed) for m in members]
    active = list(range(len(members)))  # row r of the stacked tensors is members[active[r]]
    momenta = members[0].trace.momentum  # the schedule's momentum does not depend on max_lr
    step = 0
    for epoch in range(1, first.epochs + 1):
        started, epoch_first = time.perf_counter(), step
        lrs = _pack_lrs([members[i].trace for i in active])
        # epoch_batches's draw, one permutation per member, gathered by index per step
        order = torch.stack(
            [torch.randperm(n_train, device=device, generator=orders[i]) for i in active]
        )
        epoch_losses: list[Tensor] = []
        for start in range(0, n_train, batch_size):
            index = order[:, start : start + batch_size]
            loss = _member_losses(model.forward_train(data.x_train[index]), data.y_train[index])
            grads = torch.autograd.grad(loss.sum(), list(model.params.values()))
            optimizer.step(model.params, grads, lrs[step], momenta[step])
            epoch_losses.append(loss.detach())
            step += 1
        losses = torch.stack(epoch_losses).T.tolist()  # the epoch's one host sync
        elapsed = time.perf_counter() - started
        val_losses, val_accuracies = _evaluate(model, members, active, data)
        metrics: dict[int, EpochMetrics] = {}
        for row, i in enumerate(active):
            member = members[i]
            member.steps, member.train_time = step, member.train_time + elapsed
            member.diverged = _divergence(
                losses[row], val_losses[row], epoch_first, member.trace.lr
            )
            if member.diverged is not None:
                continue
            metrics[i] = EpochMetrics(
                epoch=epoch,
                step=step,
                train_loss=sum(losses[row]) / len(losses[row]),
                val_loss=val_losses[row],
                val_accuracy=val_accuracies[row],
                lr=member.trace.lr[step - 1],
                momentum=momenta[step - 1],
            )
            member.history.append(metrics[i])
        going = set(metrics)
        if mask is not None and metrics:
            chosen = mask(dict(metrics))
            going &= set(metrics) if chosen is None else set(chosen)
        if epoch == first.epochs:
            going = set()
        # _evaluate copied every member's tensors into its module: leavers need nothing more
        rows = [row for row, i in enumerate(active) if i in going]
        if len(rows) < len(active) and rows:
            model.keep(rows)
            optimizer.keep(rows)
        active = [active[row] for row in rows]
        if not active:
            return


def _pack_lrs(traces: list[ScheduleTrace]) -> list[float] | Tensor:
    """Each step's LR for the pack's rows: the one schedule's numbers when the rows share
    it (as alone), else a ``(steps, K)`` table whose row ``step`` is one LR per member."""
    if all(trace is traces[0] for trace in traces):
        return traces[0].lr
    return torch.tensor([trace.lr for trace in traces], dtype=torch.float64).T.contiguous()


def _divergence(
    losses: list[float], val_loss: float, epoch_first: int, lrs: list[float]
) -> Divergence | None:
    """A solo run's divergence check at the end of an epoch (:func:`balance.loop.fit`)."""
    bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
    if bad is not None:
        at = epoch_first + bad
        return Divergence(step=at, lr=lrs[at], loss=losses[bad])
    if not math.isfinite(val_loss):  # the epoch's last update blew the weights up
        at = epoch_first + len(losses) - 1
        return Divergence(step=at, lr=lrs[at], loss=val_loss)
    return None


def _result(member: _Member, data: Dataset, started: float, evaluate_test: bool) -> TrainResult:
    """One member's :class:`TrainResult`, its figures measured on its own module."""
    return finish_run(
        member.config,
        member.network,
        data,
        history=member.history,
        lrs=member.trace.lr[: member.steps],
        momenta=member.trace.momentum[: member.steps],
        train_time=member.train_time,
        diverged=member.diverged,
        started=started,
        measure_test=evaluate_test,
    )
