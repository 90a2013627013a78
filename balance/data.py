"""Offline data sets, seeded train/validation/test splits, and on-device batching.

Data is held as tensors in memory and moved to the device once; batches are
index slices of a per-epoch permutation, so no DataLoader sits in the hot loop.
"""

from __future__ import annotations

import gzip
import os
import random
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from balance.config import ConfigError
from balance.plugins import import_object
from balance.safe_pickle import UnsafeBatch, load_batch

MNIST1D_CACHE_VERSION = 1


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test tensors of one data set.

    ``x_*`` are float32 of shape ``(N, C, ...)``; ``y_*`` are int64 class indices.
    The test split is for the final evaluation only, never for choosing anything.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        """Whether examples are 2-D images ``(C, H, W)`` (augmentation applies)."""
        return self.x_train.dim() == 4

    def to(self, device: torch.device | str) -> Dataset:
        """The same data on ``device`` (one copy, done once)."""
        return replace(
            self,
            **{
                field: getattr(self, field).to(device)
                for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
            },
        )


def cache_dir() -> Path:
    """Folder for generated data (``$BALANCE_CACHE_DIR`` or the user cache dir)."""
    env = os.environ.get("BALANCE_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("balance"))


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    # Several worker processes may generate the cache at once: write aside, then rename.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mnist1d_arrays(samples: int = 5000) -> dict[str, np.ndarray]:
    """MNIST-1D as generated from the package's built-in templates (seed 42).

    ``samples`` examples in all, 80% of them the training part (the package's split).
    """
    suffix = "" if samples == 5000 else f"-{samples}"
    path = cache_dir() / f"mnist1d-v{MNIST1D_CACHE_VERSION}{suffix}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset builds from templates; get_dataset (the download path) is never used.
    # It reseeds the global `random` and NumPy generators: put the caller's state back.
    random_state, numpy_state = random.getstate(), np.random.get_state()
    args = get_dataset_args()
    args.num_samples = samples
    try:
        generated = make_dataset(args)
    finally:
        random.setstate(random_state)
        np.random.set_state(numpy_state)
    arrays = {
        "x": generated["x"].astype(np.float32),
        "y": generated["y"].astype(np.int64),
        "x_test": generated["x_test"].astype(np.float32),
        "y_test": generated["y_test"].astype(np.int64),
    }
    _atomic_save_npz(path, **arrays)
    return arrays


def _load_mnist1d(_: Path | None, samples: int = 5000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    arrays = _mnist1d_arrays(samples)
    return (
        torch.from_numpy(arrays["x"]).unsqueeze(1),
        torch.from_numpy(arrays["y"]),
        torch.from_numpy(arrays["x_test"]).unsqueeze(1),
        torch.from_numpy(arrays["y_test"]),
    )


def _load_digits(_: Path | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
    )


def _find_file(folder: Path, stem: str, field: str = "data_path") -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{field}: missing file {stem}[.gz] in {folder}")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST format, optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # EOFError: a truncated .gz
        raise ConfigError(f"data_path: cannot read {path}: {error}") from None
    if len(raw) < 4:
        raise ConfigError(f"data_path: {path} is not an idx file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise ConfigError(f"data_path: {path} is not an unsigned-byte idx file (bad magic)")
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"data_path: {path} ends inside its idx header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(shape))
    if len(body) != expected:
        raise ConfigError(
            f"data_path: {path} holds {len(body)} values but its header says {expected}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _require_folder(folder: Path | None) -> Path:
    # TrainConfig demands data_path for these sets; load_dataset called directly does not.
    if folder is None:
        raise ConfigError("data_path: required for this data set, got None")
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"data_path: {folder} is not a folder")
    return folder


def _load_idx_set(folder: Path | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    folder = _require_folder(folder)
    parts = []
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        parts.append(read_idx(_find_file(folder, stem)))
    x_tr, y_tr, x_te, y_te = parts
    for images, labels, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(
                f"data_path: {split} images {images.shape} and labels {labels.shape} do not match"
            )
    return (
        torch.from_numpy(x_tr.astype(np.float32) / 255.0).unsqueeze(1),
        torch.from_numpy(y_tr.astype(np.int64)),
        torch.from_numpy(x_te.astype(np.float32) / 255.0).unsqueeze(1),
        torch.from_numpy(y_te.astype(np.int64)),
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = load_batch(path)
    except UnsafeBatch as error:
        raise ConfigError(
            f"data_path: {path} is not a CIFAR-10 python batch: {error}; nothing in it was run"
        ) from None
    except Exception as error:  # a malformed pickle can raise almost anything
        raise ConfigError(f"data_path: {path} is not a CIFAR-10 python batch ({error!r})") from None
    # Checked by type before anything walks it: nested lists could make asarray walk
    # 10^depth elements, a label of 10^12 a layer of as many classes.
    rows = batch.get(b"data") if type(batch) is dict else None
    labels = batch.get(b"labels") if type(batch) is dict else None
    if not (type(rows) is np.ndarray and rows.dtype == np.uint8 and rows.shape[1:] == (3072,)):
        raise ConfigError(
            f"data_path: {path} is not a CIFAR-10 python batch (no b'data' rows of 3072 bytes)"
        )
    if type(labels) is not list or not all(type(y) is int and 0 <= y < 10 for y in labels):
        raise ConfigError(
            f"data_path: {path} is not a CIFAR-10 python batch (b'labels' is no list of 0-9)"
        )
    if len(rows) != len(labels):
        raise ConfigError(f"data_path: {path} has {len(rows)} images but {len(labels)} labels")
    return rows.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _load_cifar10(folder: Path | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    folder = _require_folder(folder)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files:
        raise ConfigError(f"data_path: no data_batch_* files in {folder}")
    test_file = folder / "test_batch"
    if not test_file.is_file():
        raise ConfigError(f"data_path: missing file test_batch in {folder}")
    train = [_read_cifar_batch(path) for path in train_files]
    x_te, y_te = _read_cifar_batch(test_file)
    x_tr = np.concatenate([x for x, _ in train])
    y_tr = np.concatenate([y for _, y in train])
    return (
        torch.from_numpy(x_tr.astype(np.float32) / 255.0),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te.astype(np.float32) / 255.0),
        torch.from_numpy(y_te),
    )


Loader = Callable[[Path | None], tuple[Tensor, Tensor, Tensor, Tensor]]

LOADERS: dict[str, Loader] = {
    "mnist1d": _load_mnist1d,
    # Twice the samples from the same templates: room for a validation split of thousands.
    "mnist1d-10k": lambda path: _load_mnist1d(path, samples=10_000),
    "digits": _load_digits,
    "fashion-mnist": _load_idx_set,
    "mnist": _load_idx_set,
    "cifar10": _load_cifar10,
}


def _load_user(spec: str, path: Path | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    function = import_object(spec, "data")
    result = function(path) if path is not None else function()
    return as_tensors(result, f"{spec!r} must return")


def as_tensors(parts: object, what: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` (tensors or arrays) as float32 inputs and int64
    labels: what a ``"module:function"`` loader returns and the Python API's ``data=`` takes.

    Raises:
        ConfigError: not four parts, a part that is no tensor or array, fractional labels.
    """
    if not (isinstance(parts, tuple | list) and len(parts) == 4):
        raise ConfigError(f"data: {what} (x_train, y_train, x_test, y_test), got {type(parts)}")
    tensors = []
    for name, part in zip(("x_train", "y_train", "x_test", "y_test"), parts, strict=True):
        try:
            tensors.append(torch.as_tensor(part))
        except (TypeError, ValueError, RuntimeError) as error:
            raise ConfigError(f"data: {name} is not a tensor or array ({error})") from None
        if name[0] == "y" and tensors[-1].is_floating_point() and tensors[-1].frac().any():
            raise ConfigError(f"data: {name} must hold integer class indices, got fractions")
    x_tr, y_tr, x_te, y_te = tensors
    return x_tr.float(), y_tr.long(), x_te.float(), y_te.long()


def _check_arrays(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> None:
    # A user loader's mismatch would otherwise pair images with the wrong labels silently.
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if y.dim() != 1 or len(x) != len(y):
            raise ConfigError(
                f"data: {split} inputs {tuple(x.shape)} and labels {tuple(y.shape)} do not match"
            )
        if len(y) and int(y.min()) < 0:
            raise ConfigError(
                f"data: {split} labels must be class indices >= 0, got {int(y.min())}"
            )
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ConfigError(
            f"data: test inputs {tuple(x_test.shape[1:])} and training inputs "
            f"{tuple(x_train.shape[1:])} differ in shape"
        )


def _standardize(x_train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    # Per-channel statistics of the training split only, so validation and test leak nothing.
    # They are summed in float64: a float32 reduction splits its work by torch's thread
    # count, so the data (and every run after it) would depend on how many threads
    # loaded it.
    dims = [0, *range(2, x_train.dim())]
    wide = x_train.double()
    mean = wide.mean(dim=dims, keepdim=True)
    std = wide.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return tuple(((x.double() - mean) / std).to(x_train.dtype) for x in (x_train, *others))


def load_dataset(
    name: str,
    *,
    data_path: Path | None = None,
    validation_fraction: float = 0.1,
    split_seed: int = 0,
) -> Dataset:
    """Load a data set and carve a seeded validation split out of its training data.

    Inputs are standardized per channel with training-split statistics.

    Example:
        >>> data = load_dataset("digits")
        >>> data.input_shape
        (1, 8, 8)
    """
    loaded = LOADERS[name](data_path) if name in LOADERS else _load_user(name, data_path)
    return split_dataset(
        name, *loaded, validation_fraction=validation_fraction, split_seed=split_seed
    )


def split_dataset(
    name: str,
    x_full: Tensor,
    y_full: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    validation_fraction: float,
    split_seed: int,
) -> Dataset:
    """Check loaded tensors, carve the seeded validation split and standardize them.

    What :func:`load_dataset` does after loading, for built-in, ``"module:function"``
    and Python API (``data=`` tensors) data alike.
    """
    if x_full.dim() == 1:
        raise ConfigError(
            f"data: inputs must have a batch dimension, got shape {tuple(x_full.shape)}"
        )
    if x_full.dim() == 2:  # flat features become one channel
        x_full, x_test = x_full.unsqueeze(1), x_test.unsqueeze(1)
    _check_arrays(x_full, y_full, x_test, y_test)
    n_val = round(len(x_full) * validation_fraction)
    if n_val < 1 or n_val >= len(x_full):
        raise ConfigError(
            f"validation_fraction: {validation_fraction} of {len(x_full)} training examples "
            "leaves an empty split"
        )
    order = torch.randperm(len(x_full), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_train, x_val, x_test = _standardize(x_full[train_idx], x_full[val_idx], x_test)
    num_classes = int(max(y_full.max(), y_test.max()).item()) + 1
    return Dataset(
        name=name,
        x_train=x_train.contiguous(),
        y_train=y_full[train_idx].contiguous(),
        x_val=x_val.contiguous(),
        y_val=y_full[val_idx].contiguous(),
        x_test=x_test.contiguous(),
        y_test=y_test.contiguous(),
        num_classes=num_classes,
    )


def augment_images(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop after zero padding by ``pad``, and random horizontal flip, per example.

    Works on the whole tensor at once on its own device (no per-example Python loop).
    """
    n, _, height, width = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    device = x.device
    dy = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
    rows = (dy[:, None] + torch.arange(height, device=device))[:, :, None]
    cols = dx[:, None] + torch.arange(width, device=device)
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indexing gives (N, H, W, C); move channels back to dim 1.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def epoch_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    generator: torch.Generator,
    *,
    augment: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield one epoch of shuffled ``(x, y)`` batches as slices of a permuted copy.

    The permutation (and augmentation) happens once per epoch on the data's device;
    each batch is then a contiguous view. The last batch may be smaller.
    """
    order = torch.randperm(len(x), device=x.device, generator=generator)
    xs, ys = x[order], y[order]
    if augment:
        xs = augment_images(xs, generator)
    for start in range(0, len(xs), batch_size):
        yield xs[start : start + batch_size], ys[start : start + batch_size]
