"""Parameter importances (fANOVA) of a study record's completed trials."""

from __future__ import annotations

from typing import NamedTuple

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from balance.config import FloatRange, SearchSpace
from balance.record import StudyRecord

FANOVA_TREES = 64  # Optuna's defaults, fixed here: 5.0 made PED-ANOVA the default evaluator
FANOVA_DEPTH = 64
FANOVA_SEED = 0
EVALUATOR = f"fANOVA (optuna FanovaImportanceEvaluator, seed {FANOVA_SEED})"


def fanova() -> optuna.importance.FanovaImportanceEvaluator:
    """The importance evaluator, every setting explicit."""
    return optuna.importance.FanovaImportanceEvaluator(
        n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH, seed=FANOVA_SEED
    )


class Importances(NamedTuple):
    """Parameter importances, or the reason there are none (``values`` is empty then)."""

    values: dict[str, float]
    evaluator: str
    reason: str | None


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """The distribution each searched parameter was suggested from (as the objective does)."""
    return {
        name: FloatDistribution(axis.low, axis.high, log=axis.log)
        if isinstance(axis, FloatRange)
        else CategoricalDistribution(axis)
        for name, axis in space.axes().items()
    }


def param_importances(record: StudyRecord) -> Importances:
    """fANOVA importances of the parameters that vary among completed trials.

    The completed trials are copied into an in-memory Optuna study (the record keeps
    their parameters and values), so no storage is read. Needs two completed trials
    and one parameter with two or more values; anything less, or an error inside
    Optuna, gives the reason instead of values.
    """
    complete = [t for t in record.trials if t.state == "complete" and t.value is not None]
    if len(complete) < 2:
        return Importances(
            {}, EVALUATOR, f"needs at least 2 completed trials, the study has {len(complete)}"
        )
    space = distributions(record.config.search)
    varying = sorted(
        name for name in space if len({repr(trial.params.get(name)) for trial in complete}) > 1
    )
    if not varying:
        return Importances({}, EVALUATOR, "no parameter takes two values among completed trials")
    frozen = [
        optuna.trial.create_trial(
            params={name: trial.params[name] for name in space},
            distributions=space,
            value=trial.value,
        )
        for trial in complete
    ]
    try:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
        try:
            # In memory; nothing is sampled from it, the sampler is named only to be explicit.
            study = optuna.create_study(
                direction="maximize",
                sampler=optuna.samplers.RandomSampler(seed=0),
                pruner=optuna.pruners.NopPruner(),
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
        study.add_trials(frozen)
        values = optuna.importance.get_param_importances(
            study, evaluator=fanova(), params=varying, target=None, normalize=True
        )
    # Optuna's own refusals, shown in the page; a Warning only arrives here raised, under a
    # caller's -W error: it must not end a finished sweep, so it is shown the same way.
    except (ValueError, RuntimeError, Warning) as error:
        return Importances({}, EVALUATOR, f"optuna could not compute them: {error}")
    return Importances({key: float(value) for key, value in values.items()}, EVALUATOR, None)
