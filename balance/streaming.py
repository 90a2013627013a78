"""Data that does not fit in memory: torch Datasets streamed through a DataLoader.

The in-memory path (:class:`balance.data.Dataset`, batches as index slices of
on-device tensors) stays the fast default. :class:`StreamingData` is the other
batch source: examples are read by a ``torch.utils.data.DataLoader`` (``num_workers``
processes, pinned memory on CUDA) and copied to the device batch by batch
(``non_blocking``). The shuffle is the in-memory path's own: one
``randperm`` per epoch from the run's seeded generator, so a run is deterministic per
seed, and streaming the very tensors a :class:`~balance.data.Dataset` holds trains the
very same run (without augmentation, which streaming draws per batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Sampler
from torch.utils.data import Dataset as TorchDataset

from balance.config import ConfigError
from balance.data import augment_images
from balance.plugins import object_label

Split = Literal["train", "val", "test"]
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class StreamingData:
    """Training and test examples as map-style ``torch.utils.data.Dataset`` objects.

    Each item is an ``(input, label)`` pair: the input a tensor of one example's
    shape (``(C, L)`` or ``(C, H, W)``; uint8 or float, cast to float32 on the
    device), the label an integer class index. Inputs are used as the Datasets give
    them: normalize in their transform (the in-memory path standardizes, streaming
    never reads the whole split to do so).

    Args:
        train: the training examples; the validation split is carved out of them
            with the run's ``validation_fraction`` and ``split_seed`` (the same
            examples the in-memory path holds out), unless ``val`` is given.
        test: the test examples, measured only for the final evaluation.
        val: a validation split of its own; then ``train`` is trained on whole.
        num_classes: how many classes; by default ``len(train.classes)`` (as
            torchvision's folders have), else it must be given.
        num_workers: DataLoader processes reading examples (0: in this process).
        name: the label of the data in what a study stores; by default the train
            Dataset's ``module:qualname``.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> train_set = TensorDataset(torch.randn(100, 1, 8), torch.arange(100) % 2)
        >>> test_set = TensorDataset(torch.randn(20, 1, 8), torch.arange(20) % 2)
        >>> StreamingData(train_set, test_set, num_classes=2).num_workers
        0
    """

    train: TorchDataset[Any]
    test: TorchDataset[Any]
    val: TorchDataset[Any] | None = None
    num_classes: int | None = None
    num_workers: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test", "val"):
            dataset = getattr(self, split)
            if dataset is None and split == "val":
                continue
            if isinstance(dataset, IterableDataset) or not (
                isinstance(dataset, Sized) and hasattr(dataset, "__getitem__")
            ):
                raise ConfigError(
                    f"data: StreamingData.{split} must be a map-style torch Dataset "
                    f"(__getitem__ and __len__; an IterableDataset cannot be shuffled or "
                    f"split), got {type(dataset).__name__}"
                )
        if isinstance(self.num_workers, bool) or not (
            isinstance(self.num_workers, int) and self.num_workers >= 0
        ):
            raise ConfigError(f"num_workers: must be an integer >= 0, got {self.num_workers!r}")
        if self.num_classes is not None and not (
            isinstance(self.num_classes, int) and self.num_classes >= 2
        ):
            raise ConfigError(f"num_classes: must be an integer >= 2, got {self.num_classes!r}")


class _Rows(TorchDataset[Any]):
    """Some examples of a Dataset: ``torch.utils.data.Subset`` with its indices held as
    one int64 array (8 bytes an example, where a list of ints takes about 36)."""

    def __init__(self, dataset: TorchDataset[Any], indices: Tensor) -> None:
        self.dataset = dataset
        self.indices = indices.numpy()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[index])]


class _EpochOrder(Sampler[int]):
    """Each epoch's order: ``randperm`` from the run's generator, as ``epoch_batches`` draws it."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        device = self.generator.device
        order = torch.randperm(self.size, device=device, generator=self.generator)
        return iter(order.tolist())  # once an epoch: a host sync on CUDA


@dataclass(frozen=True)
class StreamedSplits:
    """Train, validation and test torch Datasets of a run, and where batches go.

    What :func:`split_streaming` makes of :class:`StreamingData`; the streaming
    counterpart of :class:`balance.data.Dataset` (the same ``name``,
    ``input_shape``, ``num_classes``, ``is_image`` and ``to``).
    """

    name: str
    train: TorchDataset[Any]
    val: TorchDataset[Any]
    test: TorchDataset[Any]
    num_classes: int
    input_shape: tuple[int, ...]
    num_workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_image(self) -> bool:
        """Whether examples are 2-D images ``(C, H, W)`` (augmentation applies)."""
        return len(self.input_shape) == 3

    def to(self, device: torch.device | str) -> StreamedSplits:
        """The same splits, their batches copied to ``device`` (nothing is copied now)."""
        return replace(self, device=torch.device(device))

    def size(self, split: Split) -> int:
        """Examples in ``split``."""
        return len(getattr(self, split))

    def _loader(self, dataset: TorchDataset[Any], **options: Any) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            **options,
        )

    def _on_device(self, batches: Any) -> Iterator[Batch]:
        for xb, yb in batches:
            # On the host, before the copy: on CUDA a bad label is a device-side assert.
            if yb.numel() and not (int(yb.min()) >= 0 and int(yb.max()) < self.num_classes):
                raise ConfigError(
                    f"data: a streamed label is outside 0..{self.num_classes - 1} "
                    f"(got {int(yb.min())}..{int(yb.max())} in one batch)"
                )
            xb = xb.to(self.device, non_blocking=True)
            yb = yb.to(self.device, non_blocking=True)
            yield (xb if xb.dtype == torch.float32 else xb.float()), yb.long()

    def epochs(
        self, batch_size: int, generator: torch.Generator, *, augment: bool = False
    ) -> Callable[[], Iterator[Batch]]:
        """One shuffled epoch of training batches on the device per call.

        The DataLoader is built once (its ``num_workers`` stay up between epochs);
        each epoch's order is a ``randperm`` of ``generator``. ``augment`` crops and
        flips each batch on the device with the same generator.
        """
        # The DataLoader seeds its worker processes from a generator of its own, seeded
        # like the run's: neither the run's generator nor torch's global RNG (dropout's,
        # on CPU) is drawn from, so the batches are those of the in-memory path.
        loader = self._loader(
            self.train,
            batch_size=batch_size,
            sampler=_EpochOrder(self.size("train"), generator),
            generator=torch.Generator().manual_seed(generator.initial_seed()),
            persistent_workers=self.num_workers > 0,
        )

        def epoch() -> Iterator[Batch]:
            for xb, yb in self._on_device(loader):
                yield (augment_images(xb, generator) if augment else xb), yb

        return epoch

    def batches(self, split: Split | TorchDataset[Any], batch_size: int) -> Iterator[Batch]:
        """``split`` (or any torch Dataset) in order, in batches on the device."""
        dataset = getattr(self, split) if isinstance(split, str) else split
        # A generator of its own seeds the workers: without one the DataLoader draws from
        # torch's global RNG, and the next epoch's dropout masks would move.
        loader = self._loader(dataset, batch_size=batch_size, generator=torch.Generator())
        return self._on_device(loader)


def _example(dataset: TorchDataset[Any], split: str) -> tuple[Tensor, Tensor]:
    try:
        item = dataset[0]
    except Exception as error:  # a user's Dataset can raise anything
        raise ConfigError(
            f"data: cannot read {split}[0] of the {split} Dataset ({error!r})"
        ) from None
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise ConfigError(
            f"data: each {split} example must be an (input, label) pair, got {type(item).__name__}"
        )
    try:
        x, y = torch.as_tensor(item[0]), torch.as_tensor(item[1])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"data: the {split} example is not a tensor pair ({error})") from None
    if x.dim() not in (2, 3) or y.dim() != 0 or y.is_floating_point():
        raise ConfigError(
            f"data: a {split} example must be an input of shape (C, L) or (C, H, W) and an "
            f"integer label, got input {tuple(x.shape)} and label {tuple(y.shape)} {y.dtype}"
        )
    return x, y


def streamed_label(data: StreamingData) -> str:
    """``data.name``, else the train Dataset's ``module:qualname`` and a fingerprint: sha256
    of the split sizes, the class count and the first training example."""
    if data.name:
        return data.name
    digest = hashlib.sha256()
    sizes = [len(part) for part in (data.train, data.test, data.val) if part is not None]  # type: ignore[arg-type]
    digest.update(f"{sizes}{data.num_classes}".encode())
    first = data.train[0]
    for item in first if isinstance(first, tuple | list) else (first,):
        array = torch.as_tensor(item).detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode() + array.tobytes())
    return f"{object_label(type(data.train))}_{digest.hexdigest()[:12]}"


def split_streaming(
    data: StreamingData, *, validation_fraction: float, split_seed: int
) -> StreamedSplits:
    """The run's splits: ``data.val``, or the held-out part of ``data.train``.

    The held-out examples are the ones :func:`balance.data.load_dataset` holds out
    of the same number of examples with the same ``split_seed``.

    Raises:
        ConfigError: an example that is not an ``(input, label)`` pair, test and train
            inputs of different shapes, no class count, or an empty split.
    """
    x_train, _ = _example(data.train, "train")
    x_test, _ = _example(data.test, "test")
    if x_test.shape != x_train.shape:
        raise ConfigError(
            f"data: test inputs {tuple(x_test.shape)} and training inputs "
            f"{tuple(x_train.shape)} differ in shape"
        )
    num_classes = data.num_classes
    if num_classes is None:
        classes = getattr(data.train, "classes", None)
        if not isinstance(classes, Sized) or len(classes) < 2:
            raise ConfigError(
                "num_classes: give StreamingData(num_classes=...); its train Dataset has no "
                "'classes' to count, and streaming does not read every label to find them"
            )
        num_classes = len(classes)
    train, val = data.train, data.val
    if val is None:
        total = len(train)  # type: ignore[arg-type]
        n_val = round(total * validation_fraction)
        if n_val < 1 or n_val >= total:
            raise ConfigError(
                f"validation_fraction: {validation_fraction} of {total} training examples "
                "leaves an empty split"
            )
        order = torch.randperm(total, generator=torch.Generator().manual_seed(split_seed))
        train, val = _Rows(data.train, order[n_val:]), _Rows(data.train, order[:n_val])
    else:
        _example(val, "val")
    return StreamedSplits(
        name=streamed_label(data),
        train=train,
        val=val,
        test=data.test,
        num_classes=num_classes,
        input_shape=tuple(x_train.shape),
        num_workers=data.num_workers,
    )
