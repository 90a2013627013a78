"""A study's sampler and pruner, and creating or resuming it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from balance import record
from balance.config import ConfigError, StudyConfig, TrainConfig
from balance.storage import open_storage

TPE_STARTUP_TRIALS = 10  # random trials before TPE models the space (Optuna's default)
TPE_EI_CANDIDATES = 24  # candidates scored by expected improvement per sample (default)
GP_STARTUP_TRIALS = 10  # random trials before the Gaussian process (Optuna's default)
# The median pruner compares a trial only after MEDIAN_STARTUP_TRIALS others finished,
# and never in the first quarter of the first seed's epochs: 1cycle's accuracy there is
# still rising at the low LR and says little about where a setting ends.
MEDIAN_STARTUP_TRIALS = 5
MEDIAN_WARMUP_SHARE = 4  # warm-up steps = epochs // MEDIAN_WARMUP_SHARE
# Hyperband's smallest budget is an eighth of one seed's epochs; its largest is every
# seed of a trial; each rung keeps a third (Optuna's default reduction factor).
HYPERBAND_MIN_SHARE = 8
HYPERBAND_REDUCTION = 3


class QueuedGridSampler(optuna.samplers.GridSampler):
    """GridSampler for cells queued with ``enqueue_trial``; the workers decide when to stop.

    GridSampler.after_trial stops the study when one grid point is left and reads the
    finished trial's ``grid_id``, which queued trials never get: a one-cell grid raised
    ``KeyError: 'grid_id'``. Workers here run one trial per ``optimize`` call and stop
    when the queue is empty, so that stop is not needed.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Do nothing: the queue, not the sampler, ends a grid study."""


def make_sampler(config: StudyConfig, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler; each worker gets its own seed (fixed seeds repeat across workers).

    Every setting Optuna 5 lets a caller set is explicit, so results do not move with
    its defaults (5.0 made TPE multivariate with a constant liar; 4.x was neither). The
    Parzen estimator's own settings (prior weight, magic clip, endpoints, gamma,
    weights) are deprecated since 4.9 and fixed by Optuna at their old defaults:
    passing them would only raise its FutureWarning.
    """
    seed = config.sampler_seed + worker_index
    if config.sampler == "grid":
        axes = config.search.axes()
        grid = {name: axis for name, axis in axes.items() if isinstance(axis, list)}
        return QueuedGridSampler(grid, seed=seed)
    if config.sampler == "tpe":
        trials = TPE_STARTUP_TRIALS if config.n_trials is None else config.n_trials
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=min(TPE_STARTUP_TRIALS, trials),
            n_ei_candidates=TPE_EI_CANDIDATES,
            multivariate=True,  # the axes interact (weight decay x LR): model them jointly
            group=False,
            constant_liar=True,  # parallel workers do not all sample the same point
        )
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(
            seed=seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            n_startup_trials=GP_STARTUP_TRIALS,
            deterministic_objective=False,  # validation accuracy is noisy across seeds
            warn_independent_sampling=True,
        )
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner, fed per-epoch validation accuracy at step ``seed * epochs + epoch``."""
    epochs = config.train.epochs
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS,
            n_warmup_steps=max(1, epochs // MEDIAN_WARMUP_SHARE),
            interval_steps=1,
            n_min_trials=1,
        )
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, epochs // HYPERBAND_MIN_SHARE),
            max_resource=epochs * config.seeds,
            reduction_factor=HYPERBAND_REDUCTION,
            bootstrap_count=0,
        )
    return optuna.pruners.NopPruner()


def create_or_resume(config: StudyConfig, url: str) -> optuna.Study:
    """Create the study, or load it when the same file was run before.

    Raises:
        ConfigError: the stored study was made with a different space or base run.
    """
    storage = open_storage(url)
    try:  # load first: creating an existing study would still append to a journal file
        study = optuna.load_study(
            study_name=config.name,
            storage=storage,
            sampler=make_sampler(config),
            pruner=make_pruner(config),
        )
    except KeyError:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            direction="maximize",
            sampler=make_sampler(config),
            pruner=make_pruner(config),
        )
    if record.stored_signature(study) is None:
        signature = json.loads(json.dumps(config.space_signature()))
        record.save_signature(study, config, signature)
    check_signature(study, config)
    return study


def check_signature(study: optuna.Study, config: StudyConfig) -> None:
    """Refuse a study file whose space or base run differs from the one the study was made
    with (a study stored without a signature passes: there is nothing to compare).

    Raises:
        ConfigError: naming the parts that differ.
    """
    stored = record.stored_signature(study)
    if stored is None:
        return
    signature = _searched_only(json.loads(json.dumps(config.space_signature())))
    stored = _searched_only(stored)
    if "train" in stored:
        stored["train"] = _with_added_fields(stored["train"], signature["train"])
    if stored != signature:
        changed = sorted(key for key in signature if stored.get(key) != signature[key])
        raise ConfigError(
            f"study: {config.name!r} in this storage was made with a different "
            f"{', '.join(changed)}; use a new study name or the original file"
        )


def _searched_only(signature: dict[str, Any]) -> dict[str, Any]:
    """The signature with unsearched axes left out of ``search``: a study stored before an
    axis existed (``lr_multiplier``) has no key for it, and means the same space."""
    search = {name: axis for name, axis in signature.get("search", {}).items() if axis is not None}
    return {**signature, "search": search}


def _with_added_fields(stored: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """A stored base run with the fields added since (``precision``) at their defaults:
    a study stored before a field existed ran at its default."""
    defaults = TrainConfig().model_dump(mode="json")
    added = {name: defaults[name] for name in train.keys() - stored.keys() if name in defaults}
    return {**added, **stored}
