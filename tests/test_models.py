"""Models: built-ins give logits of the right shape, dropout is wired, plug-ins are checked."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from balance.config import BUILTIN_MODELS, ConfigError
from balance.models import MODELS, build_model

SHAPES = [
    ("mlp", (1, 40)),
    ("mlp", (1, 8, 8)),
    ("cnn1d", (1, 40)),
    ("cnn1d", (2, 17)),
    ("convnet", (1, 8, 8)),
    ("convnet", (1, 28, 28)),
    ("convnet", (3, 32, 32)),
    ("resnet20", (3, 32, 32)),
    ("resnet20", (1, 28, 28)),
    ("resnet56", (3, 32, 32)),
]


def test_every_name_the_config_accepts_has_a_factory() -> None:
    assert set(MODELS) == set(BUILTIN_MODELS)


@pytest.mark.parametrize(("name", "shape"), SHAPES)
def test_builtin_models_give_one_logit_per_class(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 7, dropout=0.1)
    x = torch.randn(3, *shape)
    model.train()
    assert model(x).shape == (3, 7)
    model.eval()
    with torch.inference_mode():
        assert model(x).shape == (3, 7)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dropout_modules_carry_the_configured_probability(name: str, dropout: float) -> None:
    shape = (1, 40) if name in ("mlp", "cnn1d") else (3, 32, 32)
    model = build_model(name, shape, 10, dropout)
    layers = [module for module in model.modules() if isinstance(module, nn.Dropout)]
    assert layers
    assert all(layer.p == dropout for layer in layers)


def test_dropout_acts_in_training_mode_only() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 40), 10, dropout=0.5)
    x = torch.randn(8, 1, 40)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_the_mlp_has_one_dropout_per_hidden_layer() -> None:
    model = build_model("mlp", (1, 40), 10, 0.2)
    assert sum(isinstance(module, nn.Dropout) for module in model.modules()) == 2


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("cnn1d", (1, 28, 28), "cnn1d needs \\(channels, length\\) inputs, got \\(1, 28, 28\\)"),
        ("convnet", (1, 40), "convnet needs \\(channels, height, width\\)"),
        ("resnet20", (1, 40), "resnet needs \\(channels, height, width\\)"),
    ],
)
def test_a_model_given_the_wrong_input_rank_is_a_config_error(
    name: str, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^model: {message}"):
        build_model(name, shape, 10, 0.0)


def test_a_user_model_is_built_with_the_factory_arguments(
    user_module: Callable[[str], str],
) -> None:
    name = user_module(
        """
        import math
        from torch import nn

        def build(input_shape, num_classes, dropout):
            return nn.Sequential(
                nn.Flatten(), nn.Dropout(dropout), nn.Linear(math.prod(input_shape), num_classes)
            )
        """
    )
    model = build_model(f"{name}:build", (2, 5), 4, 0.25)
    assert model(torch.randn(6, 2, 5)).shape == (6, 4)
    assert model[1].p == 0.25
    assert model[2].in_features == 10


def test_a_user_model_function_that_returns_no_module_is_a_config_error(
    user_module: Callable[[str], str],
) -> None:
    name = user_module("def build(input_shape, num_classes, dropout):\n    return 'a model'\n")
    with pytest.raises(ConfigError, match=r"must return a torch\.nn\.Module, got <class .str.>"):
        build_model(f"{name}:build", (1, 40), 10, 0.0)


def test_an_unimportable_or_uncallable_user_model_is_a_config_error(
    user_module: Callable[[str], str],
) -> None:
    name = user_module("WIDTH = 3\n")
    with pytest.raises(ConfigError, match=r"^model: cannot import"):
        build_model(f"{name}:build", (1, 40), 10, 0.0)
    with pytest.raises(ConfigError, match="is not callable"):
        build_model(f"{name}:WIDTH", (1, 40), 10, 0.0)
    with pytest.raises(ConfigError, match=r"^model: cannot import"):
        build_model("no_such_package_here.nets:build", (1, 40), 10, 0.0)
