"""Packed members train as they would alone (balance.packed), to a stated tolerance.

The layer program (mlp, cnn1d) and vmap (other models) run a member's layers as batched
matrix products (vmap: grouped convolutions), whose sums round differently from the
solo kernels: losses agree to ``RELATIVE`` (seen: about 1e-7 after a few hundred
steps), accuracy counts and per-example correctness exactly.
Dropout masks come from per-member generators in the solo run's order, so members with
dropout are held to the same tolerance as members without.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from torch import nn
from torch.utils.data import TensorDataset

from balance.config import ConfigError, TrainConfig
from balance.data import Dataset, load_dataset
from balance.models import cnn1d, convnet, mlp
from balance.packed import can_pack, pack_reason, train_packed
from balance.packed_layers import compile_layers
from balance.streaming import StreamingData
from balance.train import TrainResult, train

RELATIVE = 1e-5

DIGITS = TrainConfig(data="digits", model="mlp", max_lr=0.1, epochs=3, batch_size=32, threads=1)


def assert_matches(solo: TrainResult, packed: TrainResult) -> None:
    assert len(packed.epochs) == len(solo.epochs)
    for alone, member in zip(solo.epochs, packed.epochs, strict=True):
        assert member.train_loss == pytest.approx(alone.train_loss, rel=RELATIVE)
        assert member.val_loss == pytest.approx(alone.val_loss, rel=RELATIVE)
        assert member.val_accuracy == alone.val_accuracy
        assert (member.epoch, member.step, member.lr, member.momentum) == (
            alone.epoch,
            alone.step,
            alone.lr,
            alone.momentum,
        )
    assert packed.lr_trace == solo.lr_trace
    assert packed.momentum_trace == solo.momentum_trace
    assert packed.val_correct == solo.val_correct
    assert packed.val_examples == solo.val_examples


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    """1,000 training and 300 validation examples of MNIST-1D: two epochs in a blink."""
    full = load_dataset("mnist1d", validation_fraction=0.1)
    return replace(
        full,
        x_train=full.x_train[:1000].contiguous(),
        y_train=full.y_train[:1000].contiguous(),
        x_val=full.x_val[:300].contiguous(),
        y_val=full.y_val[:300].contiguous(),
    )


def test_mlp_members_with_and_without_dropout_match_their_solo_runs(digits: Dataset) -> None:
    updates = [
        {"seed": 0, "weight_decay": 0.0, "dropout": 0.0},
        {"seed": 1, "weight_decay": 1e-3, "dropout": 0.0},
        {"seed": 2, "weight_decay": 5e-4, "dropout": 0.2},
        {"seed": 0, "weight_decay": 0.0, "dropout": 0.1},
    ]
    configs = [DIGITS.model_copy(update=update) for update in updates]
    packed = train_packed(configs, data=digits, evaluate_test=True)
    for config, member in zip(configs, packed, strict=True):
        solo = train(config, data=digits, evaluate_test=True)
        assert_matches(solo, member)
        assert member.test_correct == solo.test_correct
        assert member.test_accuracy == solo.test_accuracy


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_members_match_their_solo_runs(digits: Dataset, optimizer: str) -> None:
    base = DIGITS.model_copy(update={"optimizer": optimizer, "max_lr": 3e-3, "epochs": 2})
    configs = [
        base.model_copy(update={"seed": s, "weight_decay": wd}) for s, wd in [(0, 0), (1, 1e-2)]
    ]
    for config, member in zip(configs, train_packed(configs, data=digits), strict=True):
        assert_matches(train(config, data=digits), member)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_members_with_their_own_max_lr_match_their_solo_runs(
    digits: Dataset, optimizer: str
) -> None:
    # a study's lr_multiplier: each member on its own 1cycle schedule, one momentum schedule
    base = DIGITS.model_copy(
        update={"optimizer": optimizer, "epochs": 2, "weight_decay": 1e-3, "dropout": 0.2}
    )
    lrs = [0.05, 0.1, 0.2] if optimizer == "sgd" else [1e-3, 3e-3, 1e-2]
    configs = [base.model_copy(update={"seed": s, "max_lr": lr}) for s, lr in enumerate(lrs)]
    packed = train_packed(configs, data=digits)
    for config, member in zip(configs, packed, strict=True):
        assert member.lr_trace[0] == pytest.approx(config.max_lr / config.div_factor)
        assert_matches(train(config, data=digits), member)


def test_cnn1d_members_with_batchnorm_match_their_solo_runs(mnist1d: Dataset) -> None:
    base = TrainConfig(model="cnn1d", max_lr=0.1, epochs=2, batch_size=100, threads=1)
    updates = [{"seed": 0, "weight_decay": 0.0}, {"seed": 1, "dropout": 0.2}, {"seed": 2}]
    configs = [base.model_copy(update=update) for update in updates]
    packed = train_packed(configs, data=mnist1d)
    for config, member in zip(configs, packed, strict=True):
        solo = train(config, data=mnist1d)
        assert_matches(solo, member)
        # the running statistics came back into the member's module
        for (name, alone), (_, mine) in zip(
            solo.model.state_dict().items(), member.model.state_dict().items(), strict=True
        ):
            assert mine.float().allclose(alone.float(), rtol=1e-4, atol=1e-6), name


def test_a_diverging_member_stops_alone(digits: Dataset) -> None:
    # w -= 0.1 * 100 * w every step: the weights grow tenfold a step and overflow
    configs = [
        DIGITS.model_copy(update={"seed": s, "weight_decay": wd})
        for s, wd in [(0, 0.0), (1, 100.0), (2, 1e-3)]
    ]
    packed = train_packed(configs, data=digits)
    solos = [train(config, data=digits) for config in configs]
    assert solos[1].diverged is not None and packed[1].diverged is not None
    assert packed[1].diverged.step == solos[1].diverged.step
    assert len(packed[1].epochs) == len(solos[1].epochs)  # the epochs before it blew up
    assert packed[1].steps == solos[1].steps and packed[1].val_correct is None
    assert not math.isfinite(packed[1].diverged.loss)
    for index in (0, 2):
        assert packed[index].diverged is None
        assert_matches(solos[index], packed[index])


def test_mask_stops_members_and_the_rest_go_on(digits: Dataset) -> None:
    configs = [DIGITS.model_copy(update={"seed": s}) for s in range(3)]
    seen: list[list[int]] = []

    def prune(metrics: dict) -> list[int]:
        seen.append(sorted(metrics))
        return [index for index in metrics if index != 1]  # member 1 stops after epoch 1

    packed = train_packed(configs, data=digits, mask=prune)
    assert seen == [[0, 1, 2], [0, 2], [0, 2]]
    assert len(packed[1].epochs) == 1 and packed[1].diverged is None
    solo = train(configs[1].model_copy(update={"epochs": 3}), data=digits)
    assert packed[1].epochs[0].train_loss == pytest.approx(solo.epochs[0].train_loss, rel=RELATIVE)
    for index in (0, 2):
        assert_matches(train(configs[index], data=digits), packed[index])


def test_can_pack_says_why_not_in_one_line(digits: Dataset) -> None:
    assert can_pack(DIGITS) is None
    assert can_pack(TrainConfig(model="cnn1d", max_lr=0.1)) is None  # BatchNorm packs
    reasons = {
        "model": DIGITS.model_copy(update={"model": "tests.plugins:tiny"}),
        "max_lr": DIGITS.model_copy(update={"max_lr": None}),
        "precision": DIGITS.model_copy(update={"precision": "bf16-mixed"}),
        "augment": DIGITS.model_copy(update={"augment": True}),
    }
    for field, config in reasons.items():
        reason = can_pack(config)
        assert reason is not None and reason.startswith(f"{field}:") and "\n" not in reason
    streamed = StreamingData(
        TensorDataset(digits.x_train, digits.y_train),
        TensorDataset(digits.x_test, digits.y_test),
        num_classes=10,
    )
    assert (can_pack(DIGITS, data=streamed) or "").startswith("data:")
    mixed = [DIGITS, DIGITS.model_copy(update={"batch_size": 64, "epochs": 4})]
    assert pack_reason(mixed) == (
        "batch_size, epochs: members of a pack may differ only in weight_decay, dropout, seed, "
        "max_lr"
    )
    with pytest.raises(ConfigError, match=r"^batch_size, epochs: "):
        train_packed(mixed, data=digits)


def test_a_model_outside_the_layer_program_runs_under_vmap_and_matches(digits: Dataset) -> None:
    # digits as 1x8x8 images: convnet (Conv2d, MaxPool2d) is not in the layer program
    images = replace(
        digits,
        x_train=digits.x_train.view(-1, 1, 8, 8),
        x_val=digits.x_val.view(-1, 1, 8, 8),
        x_test=digits.x_test.view(-1, 1, 8, 8),
    )
    assert compile_layers(convnet((1, 8, 8), 10, 0.1)) is None
    base = DIGITS.model_copy(update={"model": "convnet", "epochs": 2, "batch_size": 50})
    configs = [base.model_copy(update={"seed": s, "dropout": p}) for s, p in [(0, 0.0), (1, 0.2)]]
    for config, member in zip(configs, train_packed(configs, data=images), strict=True):
        assert_matches(train(config, data=images), member)


def test_the_layer_program_takes_only_layers_it_runs_where_it_can_run_them() -> None:
    assert compile_layers(mlp((64,), 10, 0.1)) is not None
    assert compile_layers(cnn1d((1, 40), 10, 0.1)) is not None
    refused = {
        "batch norm after flatten": nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4)),
        "grouped convolution": nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.Flatten()),
        "dilated convolution": nn.Sequential(nn.Conv1d(1, 4, 3, dilation=2), nn.Flatten()),
        "'same' padding": nn.Sequential(nn.Conv1d(1, 4, 3, padding="same"), nn.Flatten()),
        "dropout on feature maps": nn.Sequential(nn.Conv1d(1, 4, 3), nn.Dropout(0.1)),
        "linear before flatten": nn.Sequential(nn.Linear(4, 4)),
        "another layer": nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh()),
        "a subclass": nn.Sequential(nn.Flatten(), type("Mine", (nn.Linear,), {})(4, 4)),
        "not a Sequential": nn.Linear(4, 4),
    }
    for why, network in refused.items():
        assert compile_layers(network) is None, why
