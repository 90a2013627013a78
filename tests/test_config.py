"""Configuration: defaults are valid, bad input is rejected with a one-line message."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from balance.config import (
    ConfigError,
    RangeTestConfig,
    TrainConfig,
    build,
    format_validation_error,
)


def test_default_train_config_is_valid_and_names_its_defaults() -> None:
    config = TrainConfig()
    assert config.data == "mnist1d"
    assert config.model == "cnn1d"
    assert config.policy == "smith"
    assert config.one_cycle
    assert config.max_lr is None
    assert config.resolved_pct_start == 0.45


def test_default_range_test_config_is_valid() -> None:
    config = RangeTestConfig()
    assert config.start_lr < config.end_lr
    assert config.rule == "onset" and config.repeats == 3 and config.val_every == 10


def test_pct_start_defaults_per_policy_and_an_explicit_value_wins() -> None:
    assert TrainConfig(policy="fastai").resolved_pct_start == 0.25
    assert TrainConfig(policy="smith", pct_start=0.3).resolved_pct_start == 0.3
    assert not TrainConfig(policy="cosine").one_cycle


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"max_lr": 0.0}, "max_lr"),
        ({"div_factor": 1.0}, "div_factor"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"model": "transformer"}, "model"),
        ({"model": "not a path:"}, "model"),
        ({"data": "imagenet"}, "data"),
        ({"device": "tpu"}, "device"),
        ({"policy": "triangular"}, "policy"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_out_of_range_or_unknown_train_values_raise_naming_field_and_value(
    values: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(TrainConfig, values)
    message = str(caught.value)
    assert message.startswith(f"{field}:")
    assert repr(next(iter(values.values()))) in message
    with pytest.raises(ValidationError):
        TrainConfig(**values)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"policy": "smith", "pct_start": 0.5}, ("pct_start", "0.5")),
        ({"nesterov": True, "optimizer": "adam"}, ("nesterov", "'adam'")),
        ({"nesterov": True, "momentum": 0.0}, ("nesterov", "momentum=0.0")),
        ({"base_momentum": 0.96, "max_momentum": 0.95}, ("base_momentum", "0.96")),
        ({"data": "fashion-mnist"}, ("data_path", "'fashion-mnist'")),
        ({"data": "cifar10"}, ("data_path", "'cifar10'")),
    ],
)
def test_cross_field_rules_raise_naming_the_fields_and_values(
    values: dict[str, Any], words: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(TrainConfig, values)
    for word in words:
        assert word in str(caught.value)


def test_pct_start_at_or_above_half_is_fine_for_the_two_phase_fastai_policy() -> None:
    assert TrainConfig(policy="fastai", pct_start=0.6).pct_start == 0.6


def test_a_module_function_path_is_accepted_for_data_and_model() -> None:
    config = TrainConfig(data="my_pkg.data:load", model="my_pkg.nets:build")
    assert (config.data, config.model) == ("my_pkg.data:load", "my_pkg.nets:build")


def test_fashion_mnist_with_a_data_path_is_valid(tmp_path: Any) -> None:
    assert TrainConfig(data="fashion-mnist", data_path=tmp_path).data_path == tmp_path


def test_assignment_is_validated_too() -> None:
    config = TrainConfig()
    with pytest.raises(ValidationError):
        config.batch_size = 0


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"end_lr": 1e-5}, ("end_lr", "start_lr=1e-05")),
        ({"start_lr": 1.0, "end_lr": 0.5}, ("end_lr", "end_lr=0.5")),
        ({"num_steps": 4}, ("num_steps", "4")),
        ({"diverge_threshold": 1.0}, ("diverge_threshold", "1.0")),
        ({"rule": "accuracy", "val_every": 0}, ("accuracy", "val_every")),
        ({"mode": "cubic"}, ("mode", "'cubic'")),
    ],
)
def test_bad_range_test_values_raise(values: dict[str, Any], words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as caught:
        build(RangeTestConfig, values)
    for word in words:
        assert word in str(caught.value)


def test_build_returns_the_validated_model() -> None:
    config = build(TrainConfig, {"weight_decay": 0.0, "dropout": 0.5})
    assert isinstance(config, TrainConfig)
    assert (config.weight_decay, config.dropout) == (0.0, 0.5)


def test_build_reports_every_problem_at_once_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        build(TrainConfig, {"batch_size": 0, "dropout": 1.0, "weight_decay": -1.0})
    message = str(caught.value)
    assert "\n" not in message
    for part in (
        "batch_size: ",
        "(got 0)",
        "dropout: ",
        "(got 1.0)",
        "weight_decay: ",
        "(got -1.0)",
    ):
        assert part in message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        build(TrainConfig, {"epochs": -1})


def test_format_validation_error_gives_one_line_per_problem() -> None:
    with pytest.raises(ValidationError) as caught:
        TrainConfig.model_validate({"batch_size": 0, "epochs": None, "colour": "red"})
    lines = format_validation_error(caught.value, prefix="train.")
    assert len(lines) == 3
    assert all("\n" not in line for line in lines)
    assert sorted(line.split(":")[0] for line in lines) == [
        "train.batch_size",
        "train.colour",
        "train.epochs",
    ]
    assert any(line.endswith("(got None)") for line in lines)
    assert any(line.endswith("(got 'red')") for line in lines)


def test_format_validation_error_names_a_cross_field_problem_after_its_owner() -> None:
    with pytest.raises(ValidationError) as caught:
        RangeTestConfig.model_validate({"start_lr": 1.0, "end_lr": 0.1})
    (line,) = format_validation_error(caught.value, prefix="range_test.")
    assert line.startswith("range_test: end_lr must exceed start_lr")
