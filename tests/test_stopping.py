"""Stop requests land only where a worker can hand its trial back (CI failure of stop 10)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from study_files import study_config, tiny_values

from balance.pipeline import preflight, prepare
from balance.record import StageOne
from balance.storage import storage_url
from balance.study import (
    Objective,
    request_stop,
    requeue_interrupted,
    run_one_trial,
    stop_allowed,
    stop_deferred,
)
from balance.study._study import QueuedGridSampler


def test_a_request_outside_any_block_stops_at_once() -> None:
    with pytest.raises(KeyboardInterrupt):
        request_stop()


def test_a_deferred_request_is_raised_when_the_block_ends_and_only_once() -> None:
    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt), stop_deferred():
        request_stop()
        reached_end_of_block = True
    assert reached_end_of_block
    with stop_deferred():  # the request was delivered: nothing is left over
        pass


def test_a_deferred_request_is_raised_where_stopping_is_allowed() -> None:
    trained = False
    with pytest.raises(KeyboardInterrupt), stop_deferred():
        request_stop()
        with stop_allowed():
            trained = True
    assert not trained


def test_a_request_while_allowed_stops_at_once_and_deferring_resumes_after() -> None:
    with stop_deferred():
        with pytest.raises(KeyboardInterrupt), stop_allowed():
            request_stop()
        request_stop()  # deferred again: raised at the end of the block
        still_running = True
        assert still_running
        with pytest.raises(KeyboardInterrupt), stop_allowed():
            pass


def test_a_write_inside_training_finishes_before_the_stop_is_taken() -> None:
    # The objective's per-epoch storage writes run deferred inside the allowed block.
    written = False
    with stop_deferred(), stop_allowed():
        with pytest.raises(KeyboardInterrupt), stop_deferred():
            request_stop()
            written = True  # the write went on after the request
        assert written


def test_a_nested_deferred_block_leaves_a_held_request_to_the_outer_one() -> None:
    after_inner = False
    with pytest.raises(KeyboardInterrupt), stop_deferred():
        with stop_deferred():
            request_stop()
        after_inner = True
    assert after_inner


def test_an_error_in_the_block_drops_a_held_request() -> None:
    with pytest.raises(ValueError), stop_deferred():
        request_stop()
        raise ValueError("the block's own error")
    with stop_deferred():  # no stale request raised here
        pass


class _StopWhileClaiming(QueuedGridSampler):
    """A grid sampler that asks to stop right after Optuna claimed a queued trial:
    the moment where an immediate ``KeyboardInterrupt`` lost the cell."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        request_stop()


def test_a_stop_while_a_trial_is_claimed_fails_it_as_this_workers_and_queues_its_cell(
    tmp_path: Path,
) -> None:
    config = study_config(tiny_values("claimed"))
    url = storage_url(config, None, tmp_path)
    data = preflight(config)
    study = prepare(config, url, data)
    cells = len(study.get_trials(states=(TrialState.WAITING,)))
    study.sampler = _StopWhileClaiming(config.search.axes())  # every axis is a list here
    objective = Objective(config, data, StageOne.from_study(study).max_lrs, threads=1)

    with pytest.raises(KeyboardInterrupt):
        run_one_trial(study, objective)

    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert "worker" in failed.user_attrs and failed.user_attrs["runs"] == []  # never trained
    assert requeue_interrupted(study, config) == [failed.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == cells  # the claimed cell is back in the queue
    assert [t.user_attrs["cell"] for t in waiting].count(failed.user_attrs["cell"]) == 1
