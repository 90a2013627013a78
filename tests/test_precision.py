"""Mixed precision: bf16 and fp16 autocast train on CPU, fp32 stays as it was."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from study_files import ROOT
from torch import Tensor, nn
from typer.testing import CliRunner

from balance.cli import app
from balance.config import ConfigError, Precision, RangeTestConfig, TrainConfig
from balance.data import Dataset
from balance.loop import evaluate, fit, prepare
from balance.optim import build_optimizer
from balance.precision import autocast, grad_scaler
from balance.range_test import find_max_lr, range_test
from balance.schedule import build_scheduler
from balance.train import train

# Two of 100 validation examples: what bf16 moved the accuracy by at most over seeds 0-3.
ACCURACY_TOLERANCE = 0.03


def _config(**options: Any) -> TrainConfig:
    # A small MLP on 400 digits: 7 steps an epoch, well under a second a run.
    values: dict[str, Any] = {
        "data": "digits",
        "model": "mlp",
        "max_lr": 0.2,
        "epochs": 5,
        "batch_size": 64,
        "threads": 1,
    }
    return TrainConfig(**{**values, **options})


def _activation_dtypes(model: nn.Module) -> set[torch.dtype]:
    """The dtypes every Linear layer's output is seen in, from now on (a forward hook)."""
    seen: set[torch.dtype] = set()

    def hook(_: nn.Module, __: Any, output: Tensor) -> None:
        seen.add(output.dtype)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(hook)
    return seen


def _fit(config: TrainConfig, data: Dataset, model: nn.Module, **options: Any) -> Any:
    optimizer = build_optimizer(model, config, 0.2)
    steps = config.epochs * math.ceil(len(data.x_train) / config.batch_size)
    scheduler = build_scheduler(optimizer, config, steps, 0.2)
    generator = torch.Generator().manual_seed(config.seed)
    return fit(
        model,
        optimizer,
        scheduler,
        data,
        epochs=config.epochs,
        batch_size=config.batch_size,
        generator=generator,
        precision=config.precision,
        **options,
    )


def test_bf16_on_cpu_learns_as_well_as_fp32(digits: Dataset) -> None:
    full = train(_config(), data=digits)
    half = train(_config(precision="bf16-mixed"), data=digits)
    assert full.final is not None and half.final is not None and half.diverged is None
    assert half.final.val_accuracy > 0.8  # chance is 0.1
    assert abs(half.final.val_accuracy - full.final.val_accuracy) <= ACCURACY_TOLERANCE
    assert half.final.val_loss == pytest.approx(full.final.val_loss, rel=0.1)
    assert half.epochs != full.epochs  # the low precision did change the numbers


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("32", torch.float32), ("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)],
)
def test_the_forward_runs_in_the_precisions_dtype_and_the_weights_stay_fp32(
    digits: Dataset, precision: Precision, dtype: torch.dtype
) -> None:
    config = _config(epochs=1, precision=precision)
    data, model, _ = prepare(config, digits)
    seen = _activation_dtypes(model)
    history, *_ = _fit(config, data, model)
    assert seen == {dtype}  # training steps and the epoch's validation alike
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(history[0].train_loss)
    seen.clear()
    evaluate(model, data.x_val, data.y_val, precision=precision)
    assert seen == {dtype}


def test_fp32_is_the_default_and_runs_as_before(digits: Dataset) -> None:
    assert TrainConfig().precision == "32"
    default = train(_config(dropout=0.2), data=digits)
    explicit = train(_config(dropout=0.2, precision="32"), data=digits)
    assert default.epochs == explicit.epochs  # floats compared exactly
    assert default.model is not None and explicit.model is not None
    for a, b in zip(default.model.parameters(), explicit.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_range_test_sweeps_under_bf16(digits: Dataset) -> None:
    range_config = RangeTestConfig(num_steps=60)
    config = _config(precision="bf16-mixed", max_lr=None)
    data, model, _ = prepare(config, digits)
    seen = _activation_dtypes(model)
    optimizer = build_optimizer(model, config, range_config.start_lr)
    swept = range_test(
        model, optimizer, data, batch_size=64, config=range_config, precision="bf16-mixed"
    )
    assert seen == {torch.bfloat16}
    assert all(math.isfinite(loss) for loss in swept.losses[:-1])
    # find_max_lr reads the precision from the TrainConfig; the LR it finds stays put.
    half = find_max_lr(config, range_config, data=digits)
    full = find_max_lr(_config(max_lr=None), range_config, data=digits)
    assert half.max_lr == pytest.approx(full.max_lr, rel=0.5)


class _Scale(nn.Module):
    """Multiplies by a constant: fp16 gradients through it overflow under a 2**16 loss scale."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")
def test_fp16_steps_the_scaler_skips_are_no_divergence_and_the_schedule_steps_on(
    digits: Dataset,
) -> None:
    config = _config(epochs=2, precision="16-mixed")
    data, _, _ = prepare(config, digits)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _Scale(10.0))
    optimizer = build_optimizer(model, config, 0.2)
    steps = 2 * math.ceil(len(data.x_train) / config.batch_size)
    scheduler = build_scheduler(optimizer, config, steps, 0.2)
    taken = []
    optimizer.register_step_post_hook(lambda *_: taken.append(1))
    history, lrs, _, _, diverged = fit(
        model,
        optimizer,
        scheduler,
        data,
        epochs=2,
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(0),
        precision="16-mixed",
    )
    assert diverged is None and len(history) == 2
    assert history[-1].val_accuracy > 0.3  # it learns all the same (chance is 0.1)
    assert 0 < len(taken) < steps  # the first steps overflowed and were skipped
    assert len(lrs) == scheduler.last_epoch == steps  # the schedule stepped every step


def test_16_mixed_on_cpu_trains_through_the_cli(tmp_path: Path) -> None:
    """torch autocasts float16 on CPU (and scales it), so a CPU run is not refused."""
    assert grad_scaler("16-mixed", torch.device("cpu")) is not None
    args = ["--data", "digits", "--model", "mlp", "--threads", "1", "--device", "cpu"]
    args += ["--max-lr", "0.1", "--epochs", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, ["train", *args, "--precision", "16-mixed"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["config"]["precision"] == "16-mixed"
    assert saved["test_accuracy"] > 0.5


def test_a_bad_precision_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(app, ["train", "--precision", "64"])
    assert result.exit_code == 2
    assert "precision: Input should be '32', 'bf16-mixed' or '16-mixed'" in result.output


def test_a_device_without_autocast_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^precision: 'bf16-mixed' needs autocast"):
        autocast("bf16-mixed", torch.device("meta"))
    autocast("32", torch.device("meta"))  # fp32 needs none


def test_a_study_stored_before_precision_resumes_at_32_only(tmp_path: Path) -> None:
    """The committed example's signature has no ``precision``: it ran in fp32."""
    from balance.storage import storage_url
    from balance.study import create_or_resume
    from balance.study_file import load_study_file

    (tmp_path / "mnist1d-cnn").mkdir()
    example = ROOT / "reports" / "example" / "mnist1d-cnn" / "study.journal"
    shutil.copy(example, tmp_path / "mnist1d-cnn" / "study.journal")
    config = load_study_file(ROOT / "studies" / "mnist1d-cnn.toml")
    url = storage_url(config, None, tmp_path)
    create_or_resume(config, url)  # not refused: the stored run was fp32
    changed = config.model_copy(
        update={"train": config.train.model_copy(update={"precision": "bf16-mixed"})}
    )
    with pytest.raises(ConfigError, match="different train"):
        create_or_resume(changed, url)
