"""The final evaluation: the chosen cell and the baseline, retrained per seed, on the test split."""

from __future__ import annotations

from typing import Any

import optuna

from balance import record
from balance.cells import best_cell, cell_results
from balance.config import ConfigError, StudyConfig, TrainConfig, base_setting, trial_config
from balance.loop import resolve_device
from balance.models import ModelFactory
from balance.objects import TrainingData
from balance.record import StageOne, load_final, read_trials
from balance.runs import EvaluationRun, EvaluationSide, FinalEvaluation
from balance.train import train


def chosen_setting(study: optuna.Study, config: StudyConfig) -> tuple[int, dict[str, Any]]:
    """The best cell (:func:`balance.cells.best_cell`): its first trial and full setting.

    Raises:
        ConfigError: no trial has completed.
    """
    best = best_cell(cell_results(read_trials(study), base_setting(config.train)))
    if best is None:
        raise ConfigError(f"study: {config.name!r} has no completed trial yet")
    return best.trials[0], dict(best.params)


def evaluate_on_test(
    study: optuna.Study,
    config: StudyConfig,
    data: TrainingData,
    threads: int | None = None,
    workers: int = 1,
    model: ModelFactory | None = None,
) -> FinalEvaluation:
    """Train the chosen setting (and the baseline) once per seed and measure the test split.

    The test split chooses nothing: selection already happened on validation.
    The result is stored in the study, so it is computed once per chosen cell.
    The runs are independent: ``workers`` local processes (joblib) share them out.
    ``model``: a factory in place of ``train.model``, for both sides.
    """
    number, params = chosen_setting(study, config)
    stored = load_final(study)
    # a result stored before an axis existed names only the axes of its time
    if stored is not None and {**base_setting(config.train), **stored.params} == params:
        return stored
    max_lrs = StageOne.from_study(study).max_lrs
    chosen = trial_config(config.train, params, max_lrs).model_copy(update={"threads": threads})
    bases = {"chosen": chosen}
    baseline = config.baseline_config
    if baseline is not None:
        if baseline.max_lr is None:  # the study file's check: stage 1 fixed this size's LR
            baseline = baseline.model_copy(update={"max_lr": max_lrs[baseline.batch_size]})
        bases["baseline"] = baseline.model_copy(update={"threads": threads})
    jobs = [
        (name, base.model_copy(update={"seed": base.seed + index}))
        for name, base in bases.items()
        for index in range(config.seeds)
    ]
    from joblib import Parallel, delayed

    # CUDA runs stay in this process: one device, no gain from sharing it out.
    on_cuda = chosen.device != "cpu" and resolve_device(chosen.device).type == "cuda"
    n_jobs = 1 if on_cuda else max(1, min(workers, len(jobs)))
    runs = Parallel(n_jobs=n_jobs, backend="loky")(
        delayed(_test_run)(run_config, data, model) for _, run_config in jobs
    )
    sides = {
        name: EvaluationSide.of_runs(
            base.max_lr,
            [run for (owner, _), run in zip(jobs, runs, strict=True) if owner == name],
            config.baseline if name == "baseline" else None,
        )
        for name, base in bases.items()
    }
    final = FinalEvaluation(number, params, sides["chosen"], sides.get("baseline"))
    record.save_final(study, final)
    return final


def _test_run(config: TrainConfig, data: TrainingData, model: ModelFactory | None) -> EvaluationRun:
    result = train(config, data=data, model=model, track_test=True)
    return EvaluationRun(
        seed=config.seed,
        test_accuracy=result.test_accuracy,
        steps=[m.step for m in result.epochs],
        test_curve=[m.test_accuracy for m in result.epochs],
        diverged=result.diverged is not None,
        test_correct=result.test_correct,
        test_examples=result.test_examples,
    )
