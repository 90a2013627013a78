"""The LR range test, its suggestion rules and the super-convergence diagnostic.

The test trains for ``num_steps`` optimizer steps while the learning rate sweeps
from ``start_lr`` to ``end_lr`` (geometric or even steps), records the loss of
every step and, every ``val_every`` steps, the validation loss and accuracy on a
fixed subset (Smith's accuracy-vs-LR curve). It owns the LR while it runs: every
parameter group's ``lr`` is set directly each step and no scheduler is stepped.
Momentum (SGD) or beta1 (Adam) stays at whatever the optimizer holds.
Afterwards the model (weights, buffers, gradients, train/eval modes), the
optimizer (state and param groups) and torch's CPU and CUDA RNG states are put
back exactly as they were, even when the test raises.

Suggestion rules are pure functions of plain lists, so they can be tested and
re-run alone; :data:`SUGGESTION_RULES` names them all.

Example:
    >>> from balance.config import RangeTestConfig, TrainConfig
    >>> config = TrainConfig(data="digits", model="mlp", batch_size=32, threads=1)
    >>> result = find_max_lr(config, RangeTestConfig(num_steps=60, val_every=10))
    >>> sorted(result.suggestions)
    ['accuracy', 'minimum', 'steepest', 'valley']
"""

from balance.range_test._diagnostics import curve_warnings, diagnose_super_convergence
from balance.range_test._result import (
    Probe,
    RangeTestError,
    RangeTestResult,
    RangeTestWarning,
    SuperConvergence,
)
from balance.range_test._rules import (
    SUGGESTION_RULES,
    rule_curve,
    smooth,
    smooth_zero_phase,
    suggest_accuracy,
    suggest_all,
    suggest_minimum,
    suggest_onset,
    suggest_steepest,
    suggest_valley,
)
from balance.range_test._scaling import BatchScaling, fit_batch_scaling
from balance.range_test._sweep import find_max_lr, range_test, sweep_lrs

__all__ = [
    "SUGGESTION_RULES",
    "BatchScaling",
    "Probe",
    "RangeTestError",
    "RangeTestResult",
    "RangeTestWarning",
    "SuperConvergence",
    "curve_warnings",
    "diagnose_super_convergence",
    "find_max_lr",
    "fit_batch_scaling",
    "range_test",
    "rule_curve",
    "smooth",
    "smooth_zero_phase",
    "suggest_accuracy",
    "suggest_all",
    "suggest_minimum",
    "suggest_onset",
    "suggest_steepest",
    "suggest_valley",
    "sweep_lrs",
]
