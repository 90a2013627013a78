"""The training loop: it learns, is reproducible, reports, stops, and refuses bad input."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import pytest
import torch
from torch import nn

from balance.config import ConfigError, RangeTestConfig, TrainConfig
from balance.data import Dataset
from balance.optim import build_optimizer, parameter_groups
from balance.range_test import RangeTestResult, RangeTestWarning, find_max_lr
from balance.runs import SeedRun, pack_correct, unpack_correct
from balance.train import (
    EpochMetrics,
    TrainResult,
    choose_max_lr,
    probe_lrs,
    probe_runs,
    train,
)


def _config(**options: Any) -> TrainConfig:
    # A small MLP on 400 digits: 7 steps an epoch, well under a second a run.
    values: dict[str, Any] = {
        "data": "digits",
        "model": "mlp",
        "max_lr": 0.2,
        "epochs": 3,
        "batch_size": 64,
        "threads": 1,
    }
    return TrainConfig(**{**values, **options})


@pytest.fixture(scope="module")
def trained(digits: Dataset) -> TrainResult:
    """One ordinary run, shared by the tests that only read its result."""
    return train(_config(dropout=0.1), data=digits, evaluate_test=True)


def test_a_short_run_learns_well_above_chance(trained: TrainResult) -> None:
    assert trained.diverged is None
    assert [metrics.epoch for metrics in trained.epochs] == [1, 2, 3]
    assert trained.final is not None and trained.final.val_accuracy > 0.6  # chance is 0.1
    assert trained.epochs[-1].train_loss < trained.epochs[0].train_loss
    assert trained.final.step == trained.steps == 3 * 7


def test_a_run_counts_its_time_and_throughput(trained: TrainResult) -> None:
    assert 0 < trained.train_time <= trained.wall_time
    assert trained.samples_per_second == pytest.approx(3 * 400 / trained.train_time)


def test_the_same_seed_and_threads_give_bit_identical_runs(digits: Dataset) -> None:
    config = _config(dropout=0.3, epochs=2)
    first, again = train(config, data=digits), train(config, data=digits)
    assert first.epochs == again.epochs  # floats compared exactly
    assert first.lr_trace == again.lr_trace
    assert first.model is not None and again.model is not None
    for a, b in zip(first.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_another_seed_gives_another_run(digits: Dataset) -> None:
    first = train(_config(epochs=1, seed=0), data=digits)
    other = train(_config(epochs=1, seed=1), data=digits)
    assert first.epochs[0].train_loss != other.epochs[0].train_loss
    assert first.epochs[0].val_loss != other.epochs[0].val_loss


def test_the_callback_receives_every_epochs_metrics(digits: Dataset) -> None:
    seen: list[EpochMetrics] = []
    result = train(_config(), data=digits, callback=seen.append)
    assert seen == result.epochs
    assert [metrics.step for metrics in seen] == [7, 14, 21]


class Pruned(Exception):
    pass


def test_an_exception_raised_in_the_callback_stops_the_run(digits: Dataset) -> None:
    epochs: list[int] = []

    def prune_at_second_epoch(metrics: EpochMetrics) -> None:
        epochs.append(metrics.epoch)
        if metrics.epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        train(_config(epochs=5), data=digits, callback=prune_at_second_epoch)
    assert epochs == [1, 2]


def test_a_huge_max_lr_ends_the_run_as_diverged_without_raising(digits: Dataset) -> None:
    seen: list[EpochMetrics] = []
    result = train(
        _config(max_lr=1e6, epochs=4), data=digits, callback=seen.append, evaluate_test=True
    )
    assert result.diverged is not None
    assert not math.isfinite(result.diverged.loss)
    assert 0 <= result.diverged.step < result.steps
    assert result.diverged.lr == result.lr_trace[result.diverged.step]
    assert len(result.epochs) < 4  # stopped at the end of the epoch it diverged in
    assert result.steps == 7 * (len(result.epochs) + 1)
    assert seen == result.epochs
    assert result.test_accuracy is None  # a diverged model is not evaluated


def test_batch_size_larger_than_the_training_split_is_a_config_error(digits: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"^batch_size: 401 is larger than the training split"):
        train(_config(batch_size=401), data=digits)


def test_max_lr_none_runs_the_range_test_and_trains_at_its_answer(digits: Dataset) -> None:
    # The same meaning as `balance train` without --max-lr: the range test chooses max_lr.
    # A non-default rule, so a range_config that train() ignored would fail here.
    range_config = RangeTestConfig(num_steps=30, repeats=1, rule="steepest", probes=0)
    result = train(_config(max_lr=None), data=digits, range_config=range_config)
    found = find_max_lr(_config(max_lr=None), range_config, data=digits)
    assert result.range_test is not None and result.range_test.rule == "steepest"
    assert result.max_lr == found.max_lr == found.suggestions["steepest"]
    assert result.lr_trace[0] == pytest.approx(found.max_lr / 25.0)  # 1cycle starts at max/div
    assert result.to_dict()["range_test"]["max_lr"] == found.max_lr


def test_probe_lrs_lie_half_a_decade_apart_around_the_centre() -> None:
    root = 10**0.5
    assert probe_lrs(0.1, 5, 0.5) == pytest.approx([0.01, 0.1 / root, 0.1, 0.1 * root, 1.0])
    assert probe_lrs(0.1, 1, 0.5) == [0.1]


def test_probes_train_the_run_and_the_best_on_validation_becomes_max_lr(
    digits: Dataset,
) -> None:
    range_config = RangeTestConfig(num_steps=30, repeats=1, probes=3, probe_step=0.5)
    curve = find_max_lr(_config(max_lr=None), range_config, data=digits)
    chosen = choose_max_lr(_config(max_lr=None), range_config, data=digits)
    assert chosen.curve_max_lr == curve.max_lr
    assert len(chosen.probes) == probe_runs(range_config) == 5
    first, refined = chosen.probes[:3], chosen.probes[3:]
    assert [probe.lr for probe in first] == pytest.approx(probe_lrs(curve.max_lr, 3, 0.5))
    # The refinement: a quarter decade (half the step) either side of the first round's best.
    best_first = max(first, key=lambda probe: (probe.val_accuracy or -1.0, -probe.lr))
    assert [probe.lr for probe in refined] == pytest.approx(probe_lrs(best_first.lr, 2, 0.5))
    for probe in chosen.probes:  # each probe is the run train() would do at its LR
        run = train(_config(max_lr=probe.lr), data=digits)
        assert probe.steps == run.steps == 21
        assert probe.val_accuracy == (None if run.diverged else run.final.val_accuracy)
    best = max(chosen.probes, key=lambda probe: (probe.val_accuracy or -1.0, -probe.lr))
    assert chosen.max_lr == best.lr and chosen.min_lr == pytest.approx(best.lr / 25.0)
    back = RangeTestResult.from_dict(json.loads(json.dumps(chosen.to_dict())))
    assert back.probes == chosen.probes


def test_when_every_probe_diverges_the_curves_answer_stays_and_a_warning_says_so(
    digits: Dataset,
) -> None:
    # The sweep diverges at once and falls back to start_lr = 1e4: every probe diverges too.
    range_config = RangeTestConfig(
        start_lr=1e4, end_lr=1e9, num_steps=20, repeats=1, probes=2, probe_step=0.1
    )
    with pytest.warns(RangeTestWarning, match="every probe diverged"):
        chosen = choose_max_lr(_config(max_lr=None), range_config, data=digits)
    assert all(probe.val_accuracy is None for probe in chosen.probes)
    assert len(chosen.probes) == 2  # no refinement round around a run that diverged
    assert chosen.max_lr == chosen.curve_max_lr


def test_augment_on_non_image_data_is_a_config_error(digits: Dataset) -> None:
    flat = Dataset(
        "flat",
        digits.x_train.flatten(2),
        digits.y_train,
        digits.x_val.flatten(2),
        digits.y_val,
        digits.x_test.flatten(2),
        digits.y_test,
        10,
    )
    with pytest.raises(ConfigError, match=r"^augment: needs image data"):
        train(_config(augment=True), data=flat)


def test_augmented_training_on_images_trains_on_other_inputs(digits: Dataset) -> None:
    # Same seed, same batches: only augmentation can make the training losses differ.
    plain = train(_config(model="convnet", epochs=1), data=digits)
    result = train(_config(model="convnet", augment=True, epochs=1), data=digits)
    assert result.epochs[0].train_loss != plain.epochs[0].train_loss
    assert result.diverged is None and len(result.epochs) == 1


def _model_with_norm() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(8, 3))


def test_weight_decay_falls_only_on_weights_with_two_or_more_dimensions() -> None:
    model = _model_with_norm()
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert [p.dim() for p in decay["params"]] == [3, 2]  # conv and linear weights
    assert len(no_decay["params"]) == 4  # conv bias, norm weight and bias, linear bias
    assert all(p.dim() == 1 for p in no_decay["params"])


def test_decay_norm_and_bias_puts_every_parameter_in_the_decayed_group() -> None:
    model = _model_with_norm()
    (group,) = parameter_groups(model, 1e-3, decay_norm_and_bias=True)
    assert group["weight_decay"] == 1e-3
    assert len(group["params"]) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_of_the_optimizer() -> None:
    model = _model_with_norm()
    model[0].weight.requires_grad_(False)
    groups = parameter_groups(model, 1e-3)
    assert sum(len(group["params"]) for group in groups) == 5


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_the_optimizer_named_in_the_config_is_built(name: str, cls: type) -> None:
    config = TrainConfig(optimizer=name, momentum=0.8, weight_decay=1e-3)
    optimizer = build_optimizer(_model_with_norm(), config, lr=0.01)
    assert type(optimizer) is cls
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-3, 0.0]
    assert all(group["lr"] == 0.01 for group in optimizer.param_groups)
    first = optimizer.param_groups[0]
    assert (first["momentum"] if name == "sgd" else first["betas"][0]) == 0.8


def test_nesterov_reaches_the_sgd_optimizer() -> None:
    config = TrainConfig(optimizer="sgd", nesterov=True)
    optimizer = build_optimizer(_model_with_norm(), config, lr=0.01)
    assert all(group["nesterov"] for group in optimizer.param_groups)


def test_adamw_decays_weights_even_with_zero_gradient() -> None:
    # Decoupled decay shrinks w by lr * weight_decay per step; coupled L2 in Adam is
    # normalized away by the second moment, so a zero gradient leaves w unchanged.
    def step(name: str) -> torch.Tensor:
        model = nn.Linear(2, 1, bias=False)
        nn.init.ones_(model.weight)
        optimizer = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1), lr=0.5)
        model.weight.grad = torch.zeros_like(model.weight)
        optimizer.step()
        return model.weight.detach()

    assert torch.allclose(step("adamw"), torch.full((1, 2), 1 - 0.5 * 0.1))
    assert not torch.allclose(step("adam"), torch.full((1, 2), 1 - 0.5 * 0.1))


def test_evaluate_test_sets_the_test_figures(trained: TrainResult, digits: Dataset) -> None:
    assert trained.test_accuracy is not None and trained.test_loss is not None
    assert 0.5 < trained.test_accuracy <= 1.0
    assert trained.test_loss > 0
    assert trained.test_accuracy * len(digits.x_test) == pytest.approx(
        round(trained.test_accuracy * len(digits.x_test))
    )


def test_without_evaluate_test_the_test_split_is_not_touched(digits: Dataset) -> None:
    result = train(_config(epochs=1), data=digits)
    assert result.test_accuracy is None and result.test_loss is None


def test_to_dict_is_json_ready_and_leaves_the_model_out(trained: TrainResult) -> None:
    out = trained.to_dict()
    text = json.dumps(out, allow_nan=False)
    again = json.loads(text)
    assert "model" not in again
    assert again["steps"] == trained.steps
    assert again["epochs"][-1]["val_accuracy"] == trained.epochs[-1].val_accuracy
    assert again["lr_trace"] == trained.lr_trace
    assert again["test_accuracy"] == trained.test_accuracy


def test_to_dict_does_not_copy_the_model(trained: TrainResult) -> None:
    model = nn.Linear(1, 1)
    model.lock = threading.Lock()  # type: ignore[assignment]  # cannot be deep-copied
    result = TrainResult(**{**vars(trained), "model": model})
    assert result.to_dict()["steps"] == trained.steps


def test_a_diverged_result_serializes_its_divergence(digits: Dataset) -> None:
    result = train(_config(max_lr=1e6, epochs=1), data=digits)
    out = json.loads(json.dumps(result.to_dict()))
    assert out["diverged"]["step"] == result.diverged.step  # type: ignore[union-attr]
    assert out["epochs"] == []


def test_the_trained_model_is_returned_in_eval_ready_form(
    trained: TrainResult, digits: Dataset
) -> None:
    assert trained.model is not None
    trained.model.eval()
    with torch.inference_mode():
        logits = trained.model(digits.x_val)
    accuracy = (logits.argmax(1) == digits.y_val).float().mean().item()
    assert accuracy == pytest.approx(trained.epochs[-1].val_accuracy)


def test_the_final_validation_correctness_is_kept_per_example_and_packed(
    digits: Dataset,
) -> None:
    result = train(_config(max_lr=0.1), data=digits)
    assert result.val_examples == len(digits.x_val) == 100
    run = SeedRun.from_history(0, result.epochs, result)
    correct = run.correct()
    assert correct is not None and correct.dtype == bool and len(correct) == 100
    assert correct.mean() == pytest.approx(result.final.val_accuracy)  # the same final model
    assert len(run.val_correct or "") == 20  # 100 bits: 13 bytes in base64
    back = SeedRun.from_attrs(json.loads(json.dumps(run.to_attrs())))
    assert back == run and (back.correct() == correct).all()
    assert unpack_correct(pack_correct([True, False, True]), 3).tolist() == [True, False, True]
