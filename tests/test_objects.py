"""Models and data as Python objects: factories, tensors, streamed torch Datasets, workers."""

from __future__ import annotations

import importlib
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from study_files import ROOT, study_config, tiny_values
from torch import Tensor, nn
from torch.utils.data import IterableDataset, TensorDataset

from balance import StreamingData, report, sweep, train
from balance.config import ConfigError, RangeTestConfig, TrainConfig
from balance.data import Dataset, split_dataset
from balance.models import mlp
from balance.objects import check_picklable, labelled, resolve_data
from balance.optim import build_optimizer
from balance.range_test import RangeTestWarning, find_max_lr, range_test
from balance.record import stored_signature
from balance.storage import open_storage, storage_url
from balance.streaming import split_streaming

pytestmark = pytest.mark.filterwarnings("ignore::balance.range_test.RangeTestWarning")

WAVES_SOURCE = """
import math

import torch


def load():
    # 600 noisy waves of 3 frequencies: (N, 1, 16) inputs, integer labels.
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=generator)
    wave = torch.sin(2 * math.pi * (y[:, None] + 1) * torch.linspace(0, 1, 16))
    x = (wave + torch.randn(600, 16, generator=generator))[:, None]
    return x[:500], y[:500], x[500:], y[500:]
"""


class TinyNet(nn.Module):
    """A module-level factory: ``TinyNet(input_shape, num_classes, dropout)``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dropout: float) -> None:
        super().__init__()
        self.built_with = (input_shape, num_classes, dropout)
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), 32),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def config(**options: Any) -> TrainConfig:
    values: dict[str, Any] = {"max_lr": 0.2, "epochs": 3, "batch_size": 50, "threads": 1}
    return TrainConfig(**{**values, **options})


@pytest.fixture
def waves(user_module: Callable[[str], str]) -> tuple[str, tuple[Tensor, ...]]:
    """A registered ``module:function`` loader and the very tensors it returns."""
    name = user_module(WAVES_SOURCE)
    return f"{name}:load", importlib.import_module(name).load()


def streamed(data: Dataset, **options: Any) -> StreamingData:
    """The splits of ``data`` as torch Datasets."""
    return StreamingData(
        TensorDataset(data.x_train, data.y_train),
        TensorDataset(data.x_test, data.y_test),
        val=TensorDataset(data.x_val, data.y_val),
        num_classes=data.num_classes,
        **options,
    )


def same_run(first: Any, second: Any) -> None:
    assert first.epochs == second.epochs  # every loss and accuracy, bit for bit
    assert first.val_correct == second.val_correct
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_factory_builds_the_model_that_trains(digits: Dataset) -> None:
    result = train(config(model="cnn1d", dropout=0.1), data=digits, model=TinyNet)
    assert isinstance(result.model, TinyNet)  # config.model ("cnn1d") is not built
    assert result.model.built_with == ((1, 8, 8), 10, 0.1)
    assert result.final is not None and result.final.val_accuracy > 0.6


def test_tensors_train_the_same_run_as_the_same_tensors_from_a_loader(
    waves: tuple[str, tuple[Tensor, ...]],
) -> None:
    spec, tensors = waves
    from_loader = train(config(data=spec, model="mlp"), evaluate_test=True)
    from_tensors = train(config(model="mlp"), data=tensors, evaluate_test=True)
    same_run(from_loader, from_tensors)
    assert from_loader.test_correct == from_tensors.test_correct
    assert from_tensors.final is not None and from_tensors.final.val_accuracy > 0.5
    as_arrays = tuple(part.numpy() for part in tensors)  # arrays are tensors' equals
    same_run(from_tensors, train(config(model="mlp"), data=list(as_arrays)))


def test_streaming_torch_datasets_train_the_same_run_as_the_data_in_memory(
    digits: Dataset,
) -> None:
    in_memory = train(config(model="mlp", dropout=0.1), data=digits, evaluate_test=True)
    stream = train(config(model="mlp", dropout=0.1), data=streamed(digits), evaluate_test=True)
    same_run(in_memory, stream)
    assert (stream.test_accuracy, stream.test_correct) == (
        in_memory.test_accuracy,
        in_memory.test_correct,
    )
    assert stream.final is not None and stream.final.val_accuracy > 0.6


def test_a_streamed_label_outside_the_classes_is_one_line_not_an_index_error(
    digits: Dataset,
) -> None:
    labels = digits.y_train.clone()
    labels[7] = digits.num_classes  # one past the last class
    bad = StreamingData(
        TensorDataset(digits.x_train, labels),
        TensorDataset(digits.x_test, digits.y_test),
        val=TensorDataset(digits.x_val, digits.y_val),
        num_classes=digits.num_classes,
    )
    with pytest.raises(
        ConfigError, match=r"^data: a streamed label is outside 0\.\.9 \(got 0\.\.10"
    ):
        train(config(model="mlp", batch_size=100), data=bad)


def test_a_streamed_run_is_deterministic_per_seed_with_worker_processes(digits: Dataset) -> None:
    data = streamed(digits)
    first = train(config(model="mlp", epochs=2), data=data)
    same_run(first, train(config(model="mlp", epochs=2), data=streamed(digits, num_workers=2)))
    other = train(config(model="mlp", epochs=2, seed=1), data=data)
    assert other.epochs != first.epochs


def test_streamed_images_are_augmented_per_batch_deterministically_per_seed(
    digits: Dataset,
) -> None:
    first = train(config(model="mlp", augment=True, epochs=2), data=streamed(digits))
    same_run(first, train(config(model="mlp", augment=True, epochs=2), data=streamed(digits)))
    in_memory = train(config(model="mlp", augment=True, epochs=2), data=digits)
    assert first.epochs != in_memory.epochs  # crops drawn per batch, not per epoch
    assert first.diverged is None and len(first.epochs) == 2


def test_a_sweep_streams_torch_datasets_through_stage_one_and_every_trial(
    tmp_path: Path, digits: Dataset
) -> None:
    values = tiny_values("streamed", train={"max_lr": None})
    values["train"].pop("data"), values["train"].pop("model")  # labels come from the objects
    study = study_config(
        values,
        range_test={"num_steps": 30, "repeats": 1, "probes": 0},  # noise scale too
    )
    result = sweep(study, root=tmp_path, data=streamed(digits), model=TinyNet)
    assert result.summary["audit"]["missing"] == []
    assert result.summary["test"]["chosen"]["test_accuracy"] > 0.5
    assert "TensorDataset" in (tmp_path / "streamed" / "index.html").read_text()


def test_streaming_carves_the_validation_split_the_in_memory_path_holds_out() -> None:
    x, y = torch.randn(50, 1, 4), torch.arange(50)  # labels name the examples
    in_memory = split_dataset("ids", x, y, x[:5], y[:5], validation_fraction=0.2, split_seed=3)
    splits = split_streaming(
        StreamingData(TensorDataset(x, y), TensorDataset(x[:5], y[:5]), num_classes=50),
        validation_fraction=0.2,
        split_seed=3,
    )
    assert [int(splits.val[i][1]) for i in range(10)] == in_memory.y_val.tolist()
    assert [int(splits.train[i][1]) for i in range(40)] == in_memory.y_train.tolist()
    assert splits.input_shape == (1, 4)
    assert re.fullmatch(r"torch\.utils\.data\.dataset:TensorDataset_[0-9a-f]{12}", splits.name)


def test_the_range_test_on_streamed_data_draws_the_in_memory_curve(digits: Dataset) -> None:
    settings = RangeTestConfig(num_steps=40, repeats=1, val_every=10, probes=0)
    base = config(model="mlp", batch_size=32)
    in_memory = find_max_lr(base, settings, data=digits, model=mlp)
    stream = find_max_lr(base, settings, data=streamed(digits), model=mlp)
    assert stream.losses == in_memory.losses and stream.val_accuracies == in_memory.val_accuracies
    # The low-level test trains the module it is given, on data moved to its device.
    torch.manual_seed(0)
    network = TinyNet((1, 8, 8), 10, 0.0)
    optimizer = build_optimizer(network, base, settings.start_lr)
    single = range_test(network, optimizer, streamed(digits), batch_size=32, config=settings)
    assert len(single.losses) >= 20 and single.max_lr > 0


def lambda_factory() -> Callable[..., nn.Module]:
    return lambda shape, classes, dropout: mlp(shape, classes, dropout)


def closure_factory() -> Callable[..., nn.Module]:
    width = 16

    def factory(shape: tuple[int, ...], classes: int, dropout: float) -> nn.Module:
        return mlp(shape, classes, dropout, width=width)

    return factory


class Unpicklable(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """A Dataset holding a transform that cannot be pickled (a lambda)."""

    def __init__(self, inner: TensorDataset) -> None:
        self.inner = inner
        self.transform = lambda x: x

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.inner[index]
        return self.transform(x), y


@pytest.mark.parametrize("make", [lambda_factory, closure_factory], ids=["lambda", "closure"])
def test_two_workers_refuse_a_factory_they_cannot_receive_in_one_line(
    tmp_path: Path, digits: Dataset, make: Callable[[], Callable[..., nn.Module]]
) -> None:
    study = study_config(tiny_values("refused"))
    with pytest.raises(ConfigError) as caught:
        sweep(study, workers=2, root=tmp_path, data=digits, model=make())
    message = str(caught.value)
    assert message.startswith("model: workers=2 ") and "\n" not in message
    assert "module level" in message and "not as a lambda or closure" in message
    assert not (tmp_path / "refused").exists()  # nothing stored, nothing trained
    check_picklable(1, model=make(), data=digits)  # one worker: anything goes


def test_two_workers_refuse_streamed_datasets_they_cannot_receive(digits: Dataset) -> None:
    data = streamed(digits)
    data = StreamingData(Unpicklable(data.train), data.test, num_classes=10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^data: workers=3 .* module level") as caught:
        check_picklable(3, model=TinyNet, data=data)
    assert "\n" not in str(caught.value)


def test_a_sweep_of_two_workers_trains_a_module_level_factory_on_tensors(
    tmp_path: Path, waves: tuple[str, tuple[Tensor, ...]]
) -> None:
    _, tensors = waves
    values = tiny_values("objects", train={"batch_size": 50, "max_lr": 0.2})
    values["train"].pop("data"), values["train"].pop("model")  # labels come from the objects
    study = study_config(values, range_test={"noise_scale": False})
    result = sweep(study, workers=2, root=tmp_path, data=tensors, model=TinyNet)
    assert result.summary["audit"]["missing"] == [] and result.summary["audit"]["duplicated"] == []
    assert result.summary["test"]["chosen"]["test_accuracy"] > 0.4  # chance is 1/3
    stored = optuna.load_study(
        study_name="objects", storage=open_storage(storage_url(study, None, tmp_path))
    )
    signature = stored_signature(stored)
    assert signature is not None
    assert signature["train"]["model"] == "test_objects:TinyNet"
    assert re.fullmatch(r"torch:Tensor_[0-9a-f]{12}", signature["train"]["data"])
    # The report is rebuilt under the same labels; the bare study file names other ones.
    assert report(study, root=tmp_path, data=tensors, model=TinyNet).is_file()
    with pytest.raises(ConfigError, match=r"made with a different train"):
        report(study, root=tmp_path)
    # Other tensors under the same study name: another study, not more trials of this one.
    other = (tensors[0].flip(0), tensors[1].flip(0), *tensors[2:])
    with pytest.raises(ConfigError, match=r"made with a different train"):
        sweep(study, workers=1, root=tmp_path, data=other, model=TinyNet)


def test_labels_default_to_the_objects_names_and_keep_the_configs_own() -> None:
    tensors = (torch.zeros(4, 1, 2), torch.zeros(4), torch.zeros(2, 1, 2), torch.zeros(2))
    unset = labelled(TrainConfig(), model=TinyNet, data=tensors)
    assert unset.model == "test_objects:TinyNet"
    assert re.fullmatch(r"torch:Tensor_[0-9a-f]{12}", unset.data)
    other = (tensors[0] + 1, *tensors[1:])  # other inputs: another fingerprint
    assert labelled(TrainConfig(), data=other).data != unset.data
    assert labelled(TrainConfig(), data=tuple(t.clone() for t in tensors)).data == unset.data
    anonymous = labelled(TrainConfig(), model=lambda_factory())
    assert anonymous.model == "test_objects:lambda_factory_locals_lambda"  # a label, valid
    named = labelled(TrainConfig(model="mlp", data="digits"), model=TinyNet, data=tensors)
    assert (named.model, named.data) == ("mlp", "digits")


class Stream(IterableDataset[tuple[Tensor, Tensor]]):
    def __iter__(self) -> Any:
        yield torch.zeros(1, 4), torch.tensor(0)


def pairs(n: int, shape: tuple[int, ...] = (1, 4)) -> TensorDataset:
    return TensorDataset(torch.randn(n, *shape), torch.arange(n) % 2)


BAD_DATA = {
    "three parts": (lambda: (torch.zeros(4, 2), torch.zeros(4), torch.zeros(2, 2)), "data: "),
    "a name": (lambda: "digits", "data: expected .* got str .*TrainConfig.data"),
    "a non-array part": (
        lambda: (torch.zeros(4, 2), "labels", torch.zeros(2, 2), torch.zeros(2)),
        "data: y_train is not a tensor or array",
    ),
    "fewer labels": (
        lambda: (torch.zeros(4, 2), torch.zeros(3), torch.zeros(2, 2), torch.zeros(2)),
        "data: train inputs .* do not match",
    ),
    "fractional labels": (
        lambda: (torch.zeros(4, 2), torch.full((4,), 0.5), torch.zeros(2, 2), torch.zeros(2)),
        "data: y_train must hold integer class indices",
    ),
    "other test shape": (
        lambda: StreamingData(pairs(10), pairs(4, (1, 5)), num_classes=2),
        "data: test inputs",
    ),
    "no class count": (lambda: StreamingData(pairs(10), pairs(4)), "num_classes: give"),
    "not pairs": (
        lambda: StreamingData(TensorDataset(torch.zeros(4, 1, 2)), pairs(4), num_classes=2),
        "data: each train example must be an .input, label. pair",
    ),
    "float labels streamed": (
        lambda: StreamingData(TensorDataset(torch.zeros(4, 1, 2), torch.zeros(4)), pairs(4)),
        "data: a train example must be .* integer label",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_data_of_a_bad_shape_or_type_is_one_clear_config_error(case: str) -> None:
    make, message = BAD_DATA[case]
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_data(make(), TrainConfig())
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: StreamingData(Stream(), pairs(4)),
            "data: StreamingData.train must be a map-style",
        ),
        (lambda: StreamingData(pairs(4), pairs(4), num_workers=-1), "num_workers: must be"),
        (lambda: StreamingData(pairs(4), pairs(4), num_classes=1), "num_classes: must be"),
    ],
)
def test_streaming_data_checks_its_fields_when_made(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_factory_returning_no_module_is_a_config_error(digits: Dataset) -> None:
    returns = r"^model: test_objects:.* must return a torch\.nn\.Module"
    with pytest.raises(ConfigError, match=returns):
        train(config(), data=digits, model=lambda shape, classes, dropout: "a model")
    with pytest.raises(ConfigError, match=r"^model: expected a factory .* got int"):
        train(config(), data=digits, model=3)  # type: ignore[arg-type]


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "Models and data as Python objects" example, as a user pastes it."""
    section = (ROOT / "README.md").read_text().split("### Models and data as Python objects")[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)  # the example writes reports/waves/
    with warnings.catch_warnings():  # a short range test's curve may be flat: said, not failed
        warnings.simplefilter("ignore", RangeTestWarning)
        exec(compile(block.group(1), "README.md", "exec"), {"__name__": "readme_example"})
    summary = json.loads((tmp_path / "reports" / "waves" / "summary.json").read_text())
    assert summary["test"]["chosen"]["test_accuracy"] > 0.5
    assert "readme_example:SmallNet" in (tmp_path / "reports" / "waves" / "index.html").read_text()
