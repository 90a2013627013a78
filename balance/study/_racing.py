"""Racing seeds: after each round, more seeds only for the cells not yet separated from the best.

The decision is :func:`balance.analysis.race_round` on the study's record; this
module queues its trials. Each round's trials are ordinary queued grid trials that
carry their round and their seed count, so any worker, on any storage, trains them,
and a re-run resumes: queued rounds are trained first, then the race goes on from
what the record holds.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from balance import record
from balance.analysis import cell_runs, race_round
from balance.cells import parse_cell_key
from balance.config import StudyConfig
from balance.record import load_record, read_trials


def queue_race_round(study: optuna.Study, config: StudyConfig) -> int:
    """Queue the next racing round; return how many cells it gives more seeds (0: done).

    Nothing is queued while a trial of the study still waits or runs: a round is
    decided on finished trials only.
    """
    if not config.race or config.max_seeds is None:
        return 0
    trials = read_trials(study)
    if any(trial.state in ("waiting", "running") for trial in trials):
        return 0
    cells = cell_runs(load_record(study, config, storage=""))
    if not cells:
        return 0
    # A cell whose racing trial diverged or was pruned leaves the race: its seeds would
    # be free again and train the same failing run once more.
    out = {t.cell for t in trials if t.race_round is not None and t.state in ("fail", "pruned")}
    round_seeds = {
        key: count
        for key, count in race_round(cells, step=config.seeds, max_seeds=config.max_seeds).items()
        if key not in out
    }
    number = 1 + max((t.race_round or 0 for t in trials), default=0)
    for key, count in round_seeds.items():
        record.enqueue_cell(study, parse_cell_key(key), race_round=number, seed_count=count)
    return len(round_seeds)


def race(study: optuna.Study, config: StudyConfig, train_queued: Callable[[], None]) -> int:
    """Run racing rounds until the best stands alone or the seed budget is spent.

    ``train_queued`` trains every queued trial (the local workers). Returns the
    number of rounds run.
    """
    rounds = 0
    while queue_race_round(study, config):
        train_queued()
        rounds += 1
    return rounds
