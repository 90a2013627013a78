"""LR range test: suggestion rules, the sweep, its stop rule, restoration, results, plot."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from balance.config import RangeTestConfig, TrainConfig
from balance.data import load_dataset
from balance.loop import fit, prepare
from balance.optim import build_optimizer
from balance.range_test import (
    SUGGESTION_RULES,
    RangeTestError,
    RangeTestResult,
    RangeTestWarning,
    SuperConvergence,
    curve_warnings,
    diagnose_super_convergence,
    find_max_lr,
    range_test,
    rule_curve,
    smooth,
    smooth_zero_phase,
    suggest_accuracy,
    suggest_minimum,
    suggest_onset,
    suggest_steepest,
    suggest_valley,
    sweep_lrs,
)
from balance.range_test._rules import choose, rule_spread
from balance.schedule import build_scheduler
from balance.train import train

torch.set_num_threads(1)

# Short sweeps on tiny data are meant to draw these; tests that check them use pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore::balance.range_test.RangeTestWarning")

DIGITS = TrainConfig(
    data="digits", model="mlp", batch_size=32, epochs=2, dropout=0.1, max_lr=0.1, threads=1
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def u_curve(num: int = 100) -> tuple[list[float], list[float]]:
    """Loss vs LR over 1e-4..10: flat, steepest descent at LR 0.01, minimum near 0.3, then up."""
    lrs = list(np.geomspace(1e-4, 10, num))
    u = np.log10(lrs)
    loss = 2.3 - 2.0 / (1 + np.exp(-3 * (u + 2))) + np.exp(3 * (u - 0.2))
    return lrs, list(loss)


def small_model() -> nn.Module:
    # Batch norm (buffers), dropout (RNG) and a bias-free layer: every kind of state.
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(32, 10, bias=False),
    )


# --------------------------------------------------------------------------- pure rules


def test_steepest_lies_before_minimum_on_u_shaped_curve():
    lrs, loss = u_curve()
    steepest = suggest_steepest(lrs, loss)
    lowest = lrs[int(np.argmin(loss))]
    assert steepest is not None
    assert steepest < lowest
    assert 0.01 / 1.15 <= steepest <= 0.01 * 1.15  # within one sweep step of the true point


def test_minimum_rule_is_a_fraction_of_the_argmin_lr():
    lrs, loss = u_curve()
    lowest = lrs[int(np.argmin(loss))]
    default = RangeTestConfig().minimum_fraction
    assert suggest_minimum(lrs, loss) == pytest.approx(lowest * default)
    assert suggest_minimum(lrs, loss, fraction=0.1) == pytest.approx(lowest / 10)  # fastai's
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            suggest_minimum(lrs, loss, fraction=bad)


def test_valley_lies_inside_the_descent():
    lrs, loss = u_curve()
    valley = suggest_valley(lrs, loss)
    assert valley is not None
    assert lrs[0] < valley < lrs[int(np.argmin(loss))]


def test_steepest_uses_log_lr_in_exp_mode_and_lr_in_linear_mode():
    # Against log(LR) the loss falls 4x faster above LR 0.1 than below it; against the
    # LR itself the smallest LRs fall fastest (slope / LR).
    lrs = list(np.geomspace(0.01, 1, 21))
    u, knee = np.log(lrs), math.log(0.1)
    loss = list(np.where(u < knee, -0.5 * u, -0.5 * knee - 2 * (u - knee)))
    assert suggest_steepest(lrs, loss, mode="exp") > 0.1
    assert suggest_steepest(lrs, loss, mode="linear") == pytest.approx(lrs[0])


def test_rules_drop_non_finite_losses():
    lrs, loss = u_curve()
    broken = list(loss)
    broken[40], broken[41], broken[-1] = math.nan, math.inf, math.nan
    keep = [i for i in range(len(lrs)) if i not in (40, 41, len(lrs) - 1)]
    clean_lrs, clean = [lrs[i] for i in keep], [loss[i] for i in keep]
    for name in ("steepest", "valley", "minimum"):
        assert SUGGESTION_RULES[name](lrs, broken) == SUGGESTION_RULES[name](clean_lrs, clean)


def test_skip_start_ignores_an_early_spike():
    lrs, loss = u_curve()
    rng = np.random.default_rng(0)
    noisy = list(np.asarray(loss) + rng.normal(0, 0.002, len(loss)))
    noisy[1] = 9.0  # a spike at the second step: the fall after it is the steepest slope
    assert suggest_steepest(lrs, noisy) < 1e-3
    steepest = suggest_steepest(lrs, noisy, skip_start=3)
    assert steepest is not None and 0.005 < steepest < 0.02


def test_smoothing_is_bias_corrected_ema():
    losses = [2.0, 1.0, math.nan, 4.0]
    smoothed = smooth(losses, 0.5)
    assert smoothed[0] == 2.0  # no pull towards zero at the start
    assert smoothed[1] == pytest.approx((0.25 * 2 + 0.5 * 1) / 0.75)
    assert math.isnan(smoothed[2])
    assert smoothed[3] == pytest.approx((0.125 * 2 + 0.25 * 1 + 0.5 * 4) / 0.875)


def test_zero_phase_smoothing_does_not_lag():
    bump = [0.0] * 40 + [1.0] * 5 + [0.0] * 40
    causal, zero_phase = smooth(bump, 0.9), smooth_zero_phase(bump, 0.9)
    assert int(np.argmax(causal)) > 42  # the forward EMA peaks past the bump's centre
    assert int(np.argmax(zero_phase)) == 42  # forwards then backwards: centred on it
    assert math.isnan(smooth_zero_phase([1.0, math.nan, 1.0], 0.5)[1])


def test_rule_curve_caps_losses_at_their_starting_level():
    losses = [2.0, 1.0, 0.5, 0.4, 1e12]  # the step that tripped the stop
    capped = rule_curve(losses, 0.5, skip_start=1)
    assert capped == pytest.approx(smooth_zero_phase([2.0, 1.0, 0.5, 0.4, 2.0], 0.5))
    assert max(capped) <= 2.0


def test_onset_is_where_the_loss_climbed_back_a_share_of_its_drop():
    lrs = [10.0**k for k in range(-5, 3)]
    losses = [2.0, 1.5, 1.0, 0.2, 0.2, 0.25, 1.0, 3.0]  # drop 1.8; min at 1e-2 (first of two)
    assert suggest_onset(lrs, losses, rise=0.02) == pytest.approx(1.0)  # 0.25 >= 0.2 + 0.036
    assert suggest_onset(lrs, losses, rise=0.1) == pytest.approx(10.0)  # 1.0 >= 0.38
    assert suggest_onset(lrs, losses, rise=0.1, fraction=0.5) == pytest.approx(5.0)
    assert suggest_onset(lrs, [2.0, 1.5, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1]) is None  # never turned
    assert suggest_onset(lrs, [1.0] * 8) is None  # never fell


def test_disagreeing_max_lr_rules_give_the_smallest_and_say_so():
    found: list[str] = []
    suggestions = {"onset": 1.0, "minimum": 0.05, "steepest": 1e-4, "valley": 1e-4}
    assert rule_spread(suggestions) == pytest.approx(20.0)  # steepest/valley are not compared
    assert choose(suggestions, "onset", 1e-5, found) == ("minimum", 0.05)
    assert "disagree 20x" in found[0] and "onset 1" in found[0] and "minimum 0.05" in found[0]
    agreeing: list[str] = []
    assert choose({"onset": 1.0, "minimum": 0.2}, "onset", 1e-5, agreeing) == ("onset", 1.0)
    assert agreeing == []
    flat: list[str] = []
    assert choose({"onset": 1.0, "minimum": 0.2}, "onset", 1e-5, flat, distrust=True) == (
        "minimum",
        0.2,
    )
    assert "flat" in flat[0]


def test_rules_return_none_on_too_few_points():
    for name in ("steepest", "valley", "minimum"):
        assert SUGGESTION_RULES[name]([0.1, 0.2], [1.0, 0.5]) is None
    assert suggest_accuracy([0.1, 0.2], [0.5, 0.6]) is None


def test_steepest_and_valley_return_none_when_loss_never_falls():
    lrs = [0.001, 0.01, 0.1, 1.0]
    assert suggest_steepest(lrs, [1.0, 1.1, 1.2, 1.3]) is None
    assert suggest_valley(lrs, [1.0, 1.1, 1.2, 1.3]) is None


def test_flat_curve_warns():
    lrs = list(np.geomspace(1e-5, 1, 50))
    flat = list(2.3 + 0.001 * np.sin(np.arange(50)))
    found = curve_warnings(lrs, flat, num_steps=50, diverged_at=None)
    assert any("flat" in message for message in found)
    _, falling = u_curve(50)
    assert not any(
        "flat" in message for message in curve_warnings(lrs, falling, num_steps=50, diverged_at=49)
    )


def test_short_or_early_diverging_curve_warns():
    found = curve_warnings([1e-3, 1e-2, 1e-1], [2.0, 1.9, math.nan], num_steps=100, diverged_at=2)
    assert any("too few points" in message for message in found)
    assert any("first 10%" in message for message in found)


def test_accuracy_rule_returns_last_lr_before_accuracy_falls_below_peak():
    lrs = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
    accuracies = [0.1, 0.3, 0.8, 0.90, 0.89, 0.885, 0.7, 0.895, 0.2]
    # The plateau ends at 0.5: the recovery to 0.895 at LR 2 comes after a fall.
    assert suggest_accuracy(lrs, accuracies, tolerance=0.02) == 0.5
    assert suggest_accuracy(lrs, accuracies, tolerance=0.0) == 0.1
    assert suggest_accuracy(lrs, accuracies, tolerance=0.25) == 2.0


def test_diagnostic_likely_when_the_loss_falls_over_a_wide_span_of_lrs():
    lrs = [10.0**k for k in range(-4, 3)]  # 1e-4 .. 100
    losses = [2.0, 1.9, 1.0, 0.5, 0.3, 0.2, 3.0]  # half the drop (1.1) reached at 1e-2
    wide = diagnose_super_convergence(lrs, losses, turn_lr=10.0)
    assert wide.verdict == "likely" and wide.descent_lr == 0.01
    assert wide.span == pytest.approx(3.0) and "3.00 decades" in wide.explanation
    narrow = diagnose_super_convergence(lrs, losses, turn_lr=0.1)
    assert narrow.verdict == "unlikely" and narrow.span == pytest.approx(1.0)
    strict = diagnose_super_convergence(lrs, losses, turn_lr=10.0, span=3.5)
    assert strict.verdict == "unlikely"
    accuracies = [0.2, 0.85, 0.9, 0.9, 0.89, 0.3]
    shown = diagnose_super_convergence(lrs, losses, 10.0, lrs[:6], accuracies, tolerance=0.02)
    assert shown.plateau_end_lr == 1.0 and "up to LR 1" in shown.explanation


def test_diagnostic_unknown_when_the_loss_never_fell():
    diagnostic = diagnose_super_convergence([0.1, 1.0, 10.0], [1.0, 1.0, 1.0], turn_lr=10.0)
    assert diagnostic.verdict == "unknown" and diagnostic.span is None
    assert diagnose_super_convergence([0.1, 1.0], [1.0, 0.5], turn_lr=None).verdict == "unknown"


def test_super_convergence_read_from_an_older_result_keeps_its_verdict():
    old = {"verdict": "likely", "steepest_lr": 0.1, "ratio": 4.0, "explanation": "x"}
    restored = SuperConvergence.from_dict(old)
    assert restored.verdict == "likely" and restored.span is None


# --------------------------------------------------------------------------- real sweeps


def test_exp_sweep_lrs_are_geometric_from_start_to_end(digits):
    config = RangeTestConfig(start_lr=1e-3, end_lr=1e6, num_steps=40, repeats=1)
    result = find_max_lr(DIGITS, config, data=digits)
    assert result.diverged_at is not None  # the LR ends far past where the MLP diverges
    assert result.lrs == sweep_lrs(1e-3, 1e6, 40, "exp")[: len(result.lrs)]
    ratios = np.diff(np.log(sweep_lrs(1e-3, 1e6, 40, "exp")))
    assert np.allclose(ratios, ratios[0]) and sweep_lrs(1e-3, 1e6, 40, "exp")[-1] == 1e6


def test_linear_sweep_lrs_are_evenly_spaced_from_start(digits):
    config = RangeTestConfig(start_lr=0.001, end_lr=50.0, num_steps=20, mode="linear", repeats=1)
    result = find_max_lr(DIGITS, config, data=digits)
    assert result.lrs[0] == 0.001
    assert np.allclose(np.diff(result.lrs), (50.0 - 0.001) / 19)


def test_a_sweep_still_falling_at_end_lr_goes_on_at_the_same_rate(digits):
    config = RangeTestConfig(start_lr=1e-4, end_lr=1e-2, num_steps=30, repeats=1)
    with pytest.warns(RangeTestWarning, match="still falling at end_lr=0.01"):
        result = find_max_lr(DIGITS, config, data=digits)
    assert len(result.lrs) > 30 and result.lrs[-1] > 1e-2
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, ratios[0])  # one rate before and after end_lr
    # The answer comes from a curve that turned, not from the end of the stretch before it.
    assert result.rule == "onset" and result.max_lr > 1e-2 * 0.5


def test_a_curve_that_never_turns_raises_one_line(digits):
    # Full-batch steps without dropout: the loss falls smoothly all the way to end_lr.
    full_batch = DIGITS.model_copy(update={"batch_size": len(digits.x_train), "dropout": 0.0})
    config = RangeTestConfig(start_lr=1e-4, end_lr=1e-2, extend_decades=0, num_steps=20)
    with pytest.raises(
        RangeTestError, match=r"still falling at LR 0\.01.*extend_decades"
    ) as caught:
        find_max_lr(full_batch, config, data=digits)
    assert "\n" not in str(caught.value)


def test_divergence_stops_the_sweep_without_raising(digits):
    config = RangeTestConfig(start_lr=1e-3, end_lr=1e6, num_steps=80, repeats=1)
    result = find_max_lr(DIGITS, config, data=digits)
    assert result.diverged_at is not None
    assert len(result.lrs) == len(result.losses) == result.diverged_at + 1 < 80
    watched = smooth(result.losses, config.ema_beta)  # the causal EMA the stop watches
    assert not math.isfinite(result.losses[-1]) or watched[-1] > config.diverge_threshold * min(
        value for value in watched if math.isfinite(value)
    )
    assert math.isfinite(result.max_lr) and result.min_lr == pytest.approx(result.max_lr / 25)


def test_divergence_in_first_steps_warns(digits):
    config = RangeTestConfig(start_lr=100.0, end_lr=1e8, num_steps=50)
    with pytest.warns(RangeTestWarning, match="first 10%"):
        result = find_max_lr(DIGITS, config, data=digits)
    assert result.diverged_at is not None and result.diverged_at < 5
    assert result.max_lr > 0  # falls back, never crashes


def test_smoothed_curve_is_the_zero_phase_ema_of_losses(digits):
    result = find_max_lr(
        DIGITS, RangeTestConfig(num_steps=40, end_lr=1.0, smooth_beta=0.7), data=digits
    )
    expected = rule_curve(result.losses, 0.7, RangeTestConfig().skip_start)
    assert result.smoothed == pytest.approx(expected, nan_ok=True)


def test_validation_runs_every_k_steps_on_a_fixed_subset(digits):
    config = RangeTestConfig(num_steps=30, end_lr=1.0, val_every=7, val_size=50, repeats=1)
    first = find_max_lr(DIGITS, config, data=digits)
    assert first.val_steps == [6, 13, 20, 27]
    assert first.val_lrs == [first.lrs[step] for step in first.val_steps]
    # Accuracies on 50 examples are multiples of 1/50: the subset really has val_size items.
    assert all(abs(acc * 50 - round(acc * 50)) < 1e-9 for acc in first.val_accuracies)
    again = find_max_lr(DIGITS, config, data=digits)
    assert again.val_accuracies == first.val_accuracies
    assert first.suggestions["accuracy"] is not None
    assert first.diagnostic.verdict in ("likely", "unlikely")


def test_repeats_average_the_sweeps_of_consecutive_seeds(digits):
    config = RangeTestConfig(num_steps=30, end_lr=1.0, val_every=10, val_size=50)
    averaged = find_max_lr(DIGITS, config.model_copy(update={"repeats": 3}), data=digits)
    singles = [
        find_max_lr(
            DIGITS.model_copy(update={"seed": seed}),
            config.model_copy(update={"repeats": 1}),
            data=digits,
        )
        for seed in (0, 1, 2)
    ]
    assert averaged.repeats == 3 and all(single.repeats == 1 for single in singles)
    assert averaged.lrs == singles[0].lrs
    assert averaged.losses == pytest.approx(np.mean([s.losses for s in singles], axis=0))
    expected = rule_curve(averaged.losses, config.smooth_beta, config.skip_start)
    assert averaged.smoothed == pytest.approx(expected)
    assert averaged.val_accuracies == pytest.approx(
        np.mean([s.val_accuracies for s in singles], axis=0)
    )
    # Different seeds really do draw different curves, so the mean is not a copy of one.
    assert singles[0].losses != singles[1].losses


def test_averaged_sweeps_end_where_the_first_of_them_stopped(digits):
    config = RangeTestConfig(start_lr=1e-3, end_lr=1e6, num_steps=80)
    singles = [
        find_max_lr(
            DIGITS.model_copy(update={"seed": seed}),
            config.model_copy(update={"repeats": 1}),
            data=digits,
        )
        for seed in (0, 1)
    ]
    averaged = find_max_lr(DIGITS, config.model_copy(update={"repeats": 2}), data=digits)
    first_stop = min(single.diverged_at for single in singles if single.diverged_at is not None)
    assert averaged.diverged_at == first_stop
    assert len(averaged.losses) == first_stop + 1
    assert math.isfinite(averaged.max_lr)


def _state_copy(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "model": {key: value.clone() for key, value in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [module.training for module in model.modules()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # steps update state in place
        "rng": torch.get_rng_state(),
    }


def _assert_same_state(before: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    after = _state_copy(model, optimizer)
    assert before["model"].keys() == after["model"].keys()
    for key, value in before["model"].items():
        assert torch.equal(value, after["model"][key]), key
    for old, new in zip(before["grads"], after["grads"], strict=True):
        assert (old is None and new is None) or torch.equal(old, new)
    assert before["modes"] == after["modes"]
    assert before["optimizer"]["param_groups"] == after["optimizer"]["param_groups"]
    old_state, new_state = before["optimizer"]["state"], after["optimizer"]["state"]
    assert old_state.keys() == new_state.keys()
    for index, slots in old_state.items():
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(new_state[index][name]))
    assert torch.equal(before["rng"], after["rng"])


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_range_test_restores_model_optimizer_and_rng_bit_for_bit(digits, optimizer_name):
    model = small_model()
    config = DIGITS.model_copy(update={"optimizer": optimizer_name})
    optimizer = build_optimizer(model, config, 0.01)
    for xb, yb in [(digits.x_train[:32], digits.y_train[:32])] * 3:  # momentum/moments exist
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    model[4].eval()  # a mode the test must put back
    torch.manual_seed(123)
    before = _state_copy(model, optimizer)
    range_test(
        model,
        optimizer,
        digits,
        batch_size=32,
        config=RangeTestConfig(num_steps=30, end_lr=1.0, val_every=10),
    )
    _assert_same_state(before, model, optimizer)


def test_range_test_restores_state_when_training_raises(digits):
    class Boom(nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Boom.calls += 1
            if Boom.calls == 5:
                raise RuntimeError("boom")
            return x

    model = small_model().append(Boom())
    optimizer = build_optimizer(model, DIGITS, 0.01)
    before = _state_copy(model, optimizer)
    with pytest.raises(RuntimeError, match="boom"):
        range_test(model, optimizer, digits, batch_size=32, config=RangeTestConfig(num_steps=20))
    _assert_same_state(before, model, optimizer)


def test_training_after_find_max_lr_is_bit_identical(digits):
    first = train(DIGITS, data=digits)
    find_max_lr(DIGITS, RangeTestConfig(num_steps=30), data=digits)
    second = train(DIGITS, data=digits)
    assert first.lr_trace == second.lr_trace
    assert first.epochs == second.epochs
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_the_tested_model_and_optimizer_is_bit_identical(digits):
    # The harder case: the range test runs on the very model, optimizer and attached
    # 1cycle scheduler that then train; dropout draws from the global RNG.
    def run(with_range_test: bool) -> tuple[list, list[torch.Tensor]]:
        data, model, device = prepare(DIGITS, digits)
        optimizer = build_optimizer(model, DIGITS, DIGITS.max_lr)
        steps = DIGITS.epochs * math.ceil(len(data.x_train) / DIGITS.batch_size)
        scheduler = build_scheduler(optimizer, DIGITS, steps, DIGITS.max_lr)
        if with_range_test:
            range_test(
                model,
                optimizer,
                data,
                batch_size=16,
                config=RangeTestConfig(num_steps=30, end_lr=1.0),
            )
        generator = torch.Generator(device=device).manual_seed(DIGITS.seed)
        history, *_ = fit(
            model,
            optimizer,
            scheduler,
            data,
            epochs=DIGITS.epochs,
            batch_size=DIGITS.batch_size,
            generator=generator,
        )
        return history, [p.detach().clone() for p in model.parameters()]

    plain_history, plain_weights = run(False)
    tested_history, tested_weights = run(True)
    assert [(m.train_loss, m.val_loss, m.lr) for m in plain_history] == [
        (m.train_loss, m.val_loss, m.lr) for m in tested_history
    ]
    for a, b in zip(plain_weights, tested_weights, strict=True):
        assert torch.equal(a, b)


def test_result_round_trips_through_strict_json(digits):
    config = RangeTestConfig(start_lr=1e-3, end_lr=1e6, num_steps=60, val_every=5)
    result = find_max_lr(DIGITS, config, data=digits)
    assert result.diverged_at is not None
    stored = json.dumps(result.to_dict(), allow_nan=False)  # what Optuna user attrs hold
    back = RangeTestResult.from_dict(json.loads(stored))
    assert isinstance(back.diagnostic, SuperConvergence)
    assert back.to_dict() == result.to_dict()
    assert back.lrs == result.lrs and back.suggestions == result.suggestions


@pytest.mark.parametrize("rule", ["steepest", "valley"])
def test_find_max_lr_chooses_the_configured_rule(digits, rule):
    # Not the default rule ("onset"), and one whose answer differs from it here: a
    # `rule` setting that was ignored would fail.
    config = RangeTestConfig(num_steps=60, rule=rule, val_every=0)
    result = find_max_lr(DIGITS, config, data=digits)
    assert result.suggestions[rule] != result.suggestions["onset"]
    assert result.rule == rule
    assert result.max_lr == result.suggestions[rule]
    assert result.min_lr == pytest.approx(result.max_lr / DIGITS.div_factor)
    assert result.batch_size == DIGITS.batch_size
    assert set(result.suggestions) == set(SUGGESTION_RULES)
    assert result.suggestions["accuracy"] is None  # no validation was measured
    assert result.diagnostic.verdict in ("likely", "unlikely")  # read off the loss
    assert result.diagnostic.peak_accuracy is None


def test_plot_marks_every_suggestion_and_names_batch_size_and_verdict(digits, tmp_path):
    from balance.report import plot_range_test, save_figure

    result = find_max_lr(DIGITS, RangeTestConfig(num_steps=60, val_every=5), data=digits)
    figure = plot_range_test(result)
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    assert "batch size 32" in ax.get_title() and result.diagnostic.verdict in ax.get_title()
    labels = ax.get_legend().get_texts()
    text = " ".join(label.get_text() for label in labels)
    for name, lr in result.suggestions.items():
        if lr is not None:
            assert name in text
    assert "validation accuracy" in text and "max_lr" in text
    path = save_figure(figure, tmp_path / "plots" / "range.png")
    assert path.stat().st_size > 1000
