"""Data: splits, standardization, the offline loaders and their errors, batching."""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from balance.config import ConfigError
from balance.data import (
    Dataset,
    augment_images,
    cache_dir,
    epoch_batches,
    load_dataset,
    read_idx,
)

# A user data set whose rows can be traced through the split and the standardization:
# training row i is [i, 0, 1] and test row j is [1000 + j, 0, 1], one channel. One
# affine map (x - mean) / std per channel turns [a, 0, 1] into [f0, f1, f2], so
# std = 1 / (f2 - f1), mean = -f1 * std and a = f0 * std + mean.
TRACEABLE = """
import torch

def load(path=None):
    ids = torch.arange(200, dtype=torch.float32)
    x = torch.stack([ids, torch.zeros(200), torch.ones(200)], dim=1)
    test_ids = 1000 + torch.arange(20, dtype=torch.float32)
    x_test = torch.stack([test_ids, torch.zeros(20), torch.ones(20)], dim=1)
    return x, torch.arange(200) % 3, x_test, torch.arange(20) % 3
"""


def _decode(x: torch.Tensor) -> tuple[list[int], float, float]:
    """Row ids of a traceable split, and the mean and std that standardized it."""
    rows = x[:, 0, :].double()
    std = 1.0 / (rows[:, 2] - rows[:, 1])
    mean = -rows[:, 1] * std
    ids = (rows[:, 0] * std + mean).round().long().tolist()
    return ids, float(mean.mean()), float(std.mean())


@pytest.fixture
def traceable(user_module: Callable[[str], str]) -> Callable[..., Dataset]:
    spec = f"{user_module(TRACEABLE)}:load"
    return lambda **options: load_dataset(spec, **options)


def test_train_and_validation_splits_are_disjoint_and_cover_the_training_data(
    traceable: Callable[..., Dataset],
) -> None:
    data = traceable(validation_fraction=0.25)
    train_ids, _, _ = _decode(data.x_train)
    val_ids, _, _ = _decode(data.x_val)
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == list(range(200))
    assert data.y_train.tolist() == [i % 3 for i in train_ids]  # labels travel with rows
    assert data.y_val.tolist() == [i % 3 for i in val_ids]


@pytest.mark.parametrize(("fraction", "n_val"), [(0.1, 20), (0.25, 50), (0.5, 100)])
def test_split_sizes_follow_validation_fraction(
    traceable: Callable[..., Dataset], fraction: float, n_val: int
) -> None:
    data = traceable(validation_fraction=fraction)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (200 - n_val, n_val, 20)
    assert (len(data.y_train), len(data.y_val)) == (200 - n_val, n_val)


def test_the_split_is_fixed_by_split_seed(traceable: Callable[..., Dataset]) -> None:
    first = _decode(traceable(split_seed=3).x_val)[0]
    again = _decode(traceable(split_seed=3).x_val)[0]
    other = _decode(traceable(split_seed=4).x_val)[0]
    assert first == again
    assert set(first) != set(other)


def test_standardization_uses_training_statistics_only(traceable: Callable[..., Dataset]) -> None:
    data = traceable(validation_fraction=0.2)
    train_ids, train_mean, train_std = _decode(data.x_train)
    raw = torch.tensor([[i, 0.0, 1.0] for i in train_ids], dtype=torch.float64)
    assert train_mean == pytest.approx(raw.mean().item(), rel=1e-4)
    assert train_std == pytest.approx(raw.std().item(), rel=1e-4)
    # Validation and test go through the training split's map, not their own.
    for split in (data.x_val, data.x_test):
        _, mean, std = _decode(split)
        assert (mean, std) == (pytest.approx(train_mean, rel=1e-4), pytest.approx(train_std))
    assert _decode(data.x_test)[0] == list(range(1000, 1020))
    assert (data.x_test[:, 0, 0] > 10).all()  # far-off test rows stay far off


def test_loaded_data_does_not_depend_on_the_thread_count() -> None:
    # Float32 reductions split their work by thread count; a study's workers load the
    # data under 1 thread each, `balance train` under all of them, and both must train
    # on the same bits to give the same result for the same seed.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = load_dataset("mnist1d")
        torch.set_num_threads(2)
        two = load_dataset("mnist1d")
    finally:
        torch.set_num_threads(before)
    for split in ("x_train", "x_val", "x_test"):
        assert torch.equal(getattr(one, split), getattr(two, split)), split


def test_flat_features_get_one_channel_and_classes_are_counted(
    traceable: Callable[..., Dataset],
) -> None:
    data = traceable()
    assert data.input_shape == (1, 3)
    assert not data.is_image
    assert data.num_classes == 3
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64


def test_a_validation_fraction_that_empties_a_split_is_a_config_error(
    traceable: Callable[..., Dataset],
) -> None:
    with pytest.raises(ConfigError, match=r"validation_fraction: 0\.001 of 200"):
        traceable(validation_fraction=0.001)


def test_the_digits_set_loads_offline_as_8x8_images(digits: Dataset) -> None:
    assert digits.input_shape == (1, 8, 8)
    assert digits.is_image
    assert digits.num_classes == 10
    assert abs(digits.x_train.mean().item()) < 0.1


def test_user_data_gets_the_data_path_when_one_is_given(
    user_module: Callable[[str], str], tmp_path: Path
) -> None:
    name = user_module(
        """
        import torch

        def load(path):
            n = len(path.name)
            return torch.rand(n, 4), torch.arange(n) % 2, torch.rand(5, 4), torch.arange(5) % 2
        """
    )
    folder = tmp_path / "twelve-chars"
    data = load_dataset(f"{name}:load", data_path=folder, validation_fraction=0.25)
    assert len(data.x_train) + len(data.x_val) == 12


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("return [1, 2]", "must return"),
        (
            "return torch.rand(10, 3), torch.arange(9), torch.rand(4, 3), torch.arange(4)",
            "train inputs",
        ),
        (
            "return torch.rand(10, 3), torch.arange(10), torch.rand(4, 5), torch.arange(4)",
            "differ in shape",
        ),
        (
            "return torch.rand(10, 3), torch.arange(10) - 1, torch.rand(4, 3), torch.arange(4)",
            "class indices >= 0, got -1",
        ),
    ],
)
def test_a_user_data_function_returning_mismatched_arrays_is_a_config_error(
    user_module: Callable[[str], str], body: str, message: str
) -> None:
    name = user_module(f"import torch\n\ndef load():\n    {body}\n")
    with pytest.raises(ConfigError, match=message):
        load_dataset(f"{name}:load")


def test_an_unimportable_user_data_function_is_a_config_error(
    user_module: Callable[[str], str],
) -> None:
    name = user_module("def load():\n    pass\n")
    with pytest.raises(ConfigError, match="data: cannot import"):
        load_dataset(f"{name}:missing")
    with pytest.raises(ConfigError, match="data: cannot import"):
        load_dataset("no_such_module_anywhere:load")


def test_mnist1d_is_generated_from_templates_cached_as_npz_and_reread(
    isolated_cache_dir: Path,
) -> None:
    random.seed(5)
    np.random.seed(5)
    expected_draws = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)

    first = load_dataset("mnist1d")

    # mnist1d reseeds the global generators; balance puts the caller's state back.
    assert (random.random(), np.random.rand()) == expected_draws
    assert cache_dir() == isolated_cache_dir
    cached = sorted(isolated_cache_dir.iterdir())
    assert [path.name for path in cached] == ["mnist1d-v1.npz"]
    with np.load(cached[0]) as stored:
        assert stored["x"].shape == (4000, 40) and stored["x_test"].shape == (1000, 40)
        # The seed-42 template set of the mnist1d package, not a download.
        assert stored["y"][:10].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1]
        assert stored["y_test"][:10].tolist() == [2, 6, 3, 9, 4, 3, 1, 9, 5, 2]
        assert sorted(set(stored["y"].tolist())) == list(range(10))
    assert first.input_shape == (1, 40)
    assert (len(first.x_train), len(first.x_val), len(first.x_test)) == (3600, 400, 1000)

    second = load_dataset("mnist1d")
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(first, field), getattr(second, field))

    # The second load really reads the file: change the file and the data follows.
    with np.load(cached[0]) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["y"] = np.zeros_like(arrays["y"])
    np.savez(cached[0], **arrays)
    assert load_dataset("mnist1d").y_train.unique().tolist() == [0]


def test_more_mnist1d_samples_come_from_the_same_templates_in_their_own_cache_file(
    isolated_cache_dir: Path,
) -> None:
    from balance.data import LOADERS, _mnist1d_arrays

    assert "mnist1d-10k" in LOADERS  # 10,000 samples: the default study's 4,000 validation
    arrays = _mnist1d_arrays(samples=600)  # the same generator, small enough for a test
    assert arrays["x"].shape == (480, 40) and arrays["x_test"].shape == (120, 40)
    assert sorted(path.name for path in isolated_cache_dir.iterdir()) == ["mnist1d-v1-600.npz"]
    again = _mnist1d_arrays(samples=600)
    assert all(np.array_equal(arrays[key], again[key]) for key in arrays)


# --- idx files (MNIST, Fashion-MNIST) -------------------------------------------------

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _idx_arrays(n_train: int = 20, n_test: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        IDX_STEMS[0]: rng.integers(0, 256, (n_train, 5, 4), dtype=np.uint8),
        IDX_STEMS[1]: (np.arange(n_train) % 4).astype(np.uint8),
        IDX_STEMS[2]: rng.integers(0, 256, (n_test, 5, 4), dtype=np.uint8),
        IDX_STEMS[3]: (np.arange(n_test) % 4).astype(np.uint8),
    }


def _write_idx_set(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    folder.mkdir(exist_ok=True)
    for stem, array in arrays.items():
        _write(folder / stem, _idx_bytes(array), gz)
    return folder


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_read_idx_returns_the_array_that_was_written(tmp_path: Path, gz: bool) -> None:
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    path = _write(tmp_path / "images-idx3-ubyte", _idx_bytes(array), gz)
    assert np.array_equal(read_idx(path), array)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_idx_data_sets_load_as_one_channel_images(tmp_path: Path, name: str, gz: bool) -> None:
    arrays = _idx_arrays()
    folder = _write_idx_set(tmp_path / name, arrays, gz)
    data = load_dataset(name, data_path=folder, validation_fraction=0.25)
    assert data.input_shape == (1, 5, 4)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (15, 5, 6)
    assert data.num_classes == 4
    assert sorted(torch.cat([data.y_train, data.y_val]).tolist()) == sorted(
        arrays[IDX_STEMS[1]].tolist()
    )
    assert data.y_test.tolist() == arrays[IDX_STEMS[3]].tolist()
    # Pixels are scaled and standardized by one affine map: the test order is kept.
    raw_test = torch.from_numpy(arrays[IDX_STEMS[2]].astype(np.float32)).flatten()
    assert torch.equal(data.x_test.flatten().argsort(stable=True), raw_test.argsort(stable=True))


def test_a_missing_idx_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    folder = _write_idx_set(tmp_path / "mnist", _idx_arrays(), gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match=r"missing file t10k-labels-idx1-ubyte\[\.gz\] in "):
        load_dataset("mnist", data_path=folder)


def test_an_idx_set_without_a_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_path: required"):
        load_dataset("fashion-mnist")
    with pytest.raises(ConfigError, match="is not a folder"):
        load_dataset("fashion-mnist", data_path=tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x00\x09\x01\x00\x00\x00\x02ab", "bad magic"),  # 0x09: signed bytes
        (b"\x00\x01\x08\x01\x00\x00\x00\x02ab", "bad magic"),
        (b"\x00\x00", "only 2 bytes"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "ends inside its idx header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "holds 3 values but its header says 5"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "holds 3 values but its header says 2"),
    ],
    ids=["dtype", "nonzero", "short", "header", "truncated", "trailing"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_a_malformed_idx_file_is_a_config_error(
    tmp_path: Path, payload: bytes, message: str, gz: bool
) -> None:
    path = _write(tmp_path / "labels-idx1-ubyte", payload, gz)
    with pytest.raises(ConfigError, match=message):
        read_idx(path)


def test_a_cut_off_gzip_file_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "images-idx3-ubyte", _idx_bytes(np.zeros((9, 9, 9))), gz=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ConfigError, match="data_path: cannot read"):
        read_idx(path)


def test_idx_images_and_labels_of_different_counts_are_a_config_error(tmp_path: Path) -> None:
    arrays = _idx_arrays()
    arrays[IDX_STEMS[1]] = arrays[IDX_STEMS[1]][:-1]
    folder = _write_idx_set(tmp_path / "mnist", arrays, gz=False)
    with pytest.raises(ConfigError, match=r"train images \(20, 5, 4\) and labels \(19,\)"):
        load_dataset("mnist", data_path=folder)


# --- CIFAR-10 python batches ---------------------------------------------------------


def _write_cifar_batch(path: Path, n: int, first_label: int = 0) -> dict[bytes, object]:
    rng = np.random.default_rng(n)
    # The layout of the real files: rows of 3072 bytes (R, G, B planes), labels a list.
    batch = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [(first_label + i) % 10 for i in range(n)],
    }
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    return batch


def _write_cifar(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_cifar_batch(folder / "data_batch_1", 8)
    _write_cifar_batch(folder / "data_batch_2", 12, first_label=3)
    _write_cifar_batch(folder / "test_batch", 5)
    return folder


@pytest.mark.parametrize("subfolder", [False, True], ids=["flat", "cifar-10-batches-py"])
def test_cifar10_batches_load_as_3x32x32_images(tmp_path: Path, subfolder: bool) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py" if subfolder else tmp_path)
    data = load_dataset("cifar10", data_path=tmp_path, validation_fraction=0.25)
    assert data.input_shape == (3, 32, 32)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (15, 5, 5)
    assert data.num_classes == 10
    labels = [i % 10 for i in range(8)] + [(3 + i) % 10 for i in range(12)]
    assert sorted(torch.cat([data.y_train, data.y_val]).tolist()) == sorted(labels)
    assert data.y_test.tolist() == [0, 1, 2, 3, 4]


def test_cifar10_rows_become_channel_planes(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path / "cifar")
    batch = _write_cifar_batch(folder / "test_batch", 2)
    data = load_dataset("cifar10", data_path=folder)
    # Channel 0 of an image is the first 1024 bytes of its row (the red plane).
    red = torch.from_numpy(batch[b"data"][1, :1024].astype(np.float32)).reshape(32, 32)  # type: ignore[index]
    assert torch.equal(
        data.x_test[1, 0].flatten().argsort(stable=True), red.flatten().argsort(stable=True)
    )


def test_cifar10_without_test_batch_is_a_config_error(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path / "cifar")
    (folder / "test_batch").unlink()
    with pytest.raises(ConfigError, match="missing file test_batch"):
        load_dataset("cifar10", data_path=folder)


def test_cifar10_without_training_batches_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "cifar"
    folder.mkdir()
    _write_cifar_batch(folder / "test_batch", 5)
    with pytest.raises(ConfigError, match=r"no data_batch_\* files"):
        load_dataset("cifar10", data_path=folder)


@pytest.mark.parametrize(
    "payload",
    [
        b"not a pickle at all",
        b"",
        pickle.dumps([1, 2, 3]),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),  # no labels
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}),
    ],
    ids=["garbage", "empty", "list", "no-labels", "bad-size", "count-mismatch"],
)
def test_a_malformed_cifar10_batch_is_a_config_error(tmp_path: Path, payload: bytes) -> None:
    folder = _write_cifar(tmp_path / "cifar")
    (folder / "data_batch_2").write_bytes(payload)
    with pytest.raises(ConfigError, match=r"data_path: .*data_batch_2"):
        load_dataset("cifar10", data_path=folder)


# --- augmentation and batching -------------------------------------------------------


def _images(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, 6, 7, generator=torch.Generator().manual_seed(0)) + 1.0


def test_augment_images_keeps_the_shape() -> None:
    x = _images()
    assert augment_images(x, torch.Generator().manual_seed(0)).shape == x.shape


def test_augment_images_is_deterministic_for_a_seeded_generator() -> None:
    x = _images()
    first = augment_images(x, torch.Generator().manual_seed(1))
    again = augment_images(x, torch.Generator().manual_seed(1))
    other = augment_images(x, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_augment_images_without_padding_only_mirrors_some_images() -> None:
    x = _images(64)
    out = augment_images(x, torch.Generator().manual_seed(0), pad=0)
    kept = [torch.equal(a, b) for a, b in zip(out, x, strict=True)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(out, x, strict=True)]
    assert all(k != m for k, m in zip(kept, mirrored, strict=True))  # one or the other
    assert 10 < sum(mirrored) < 54  # about half, seeded


def test_augment_images_crops_a_shifted_window_of_the_zero_padded_image() -> None:
    x, pad = _images(), 2
    out = augment_images(x, torch.Generator().manual_seed(0), pad=pad)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    height, width = x.shape[2:]
    shifts = set()
    for image, source in zip(out, padded, strict=True):
        windows = {
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                image,
                (lambda w: w.flip(-1) if flip else w)(source[:, dy : dy + height, dx : dx + width]),
            )
        }
        assert windows, "an augmented image is no flipped or unflipped crop of its padded source"
        shifts |= {(dy, dx) for dy, dx, _ in windows}
    assert len(shifts) > 3  # offsets vary between images


def test_epoch_batches_yield_every_example_exactly_once_with_its_label() -> None:
    x = torch.arange(23, dtype=torch.float32)[:, None]
    y = torch.arange(23)
    generator = torch.Generator().manual_seed(0)
    batches = list(epoch_batches(x, y, 5, generator))
    assert [len(yb) for _, yb in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([yb for _, yb in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in batches)
    assert seen.tolist() != list(range(23))  # shuffled
    second = torch.cat([yb for _, yb in epoch_batches(x, y, 5, generator)])
    assert sorted(second.tolist()) == list(range(23))
    assert not torch.equal(seen, second)  # a new order each epoch


def test_epoch_batches_with_augment_keep_the_image_shape_and_pairing(digits: Dataset) -> None:
    # Image i is filled with the value i + 1, which cropping and flipping keep (padding adds
    # zeros only), so every augmented image still names the example it came from.
    y = digits.y_train[:50]
    x = (torch.arange(50, dtype=torch.float32) + 1).view(50, 1, 1, 1).expand(50, 1, 8, 8)
    batches = list(epoch_batches(x, y, 16, torch.Generator().manual_seed(0), augment=True))
    assert sum(len(xb) for xb, _ in batches) == 50
    assert all(xb.shape[1:] == x.shape[1:] for xb, _ in batches)
    origin = torch.cat([xb.amax(dim=(1, 2, 3)) for xb, _ in batches]).long() - 1
    assert sorted(origin.tolist()) == list(range(50))  # every example once
    assert torch.equal(torch.cat([yb for _, yb in batches]), y[origin])  # with its own label
