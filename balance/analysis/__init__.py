"""From a study record to frames, balance grids, a verdict and a summary: pure functions.

Nothing here opens a storage: every function takes a
:class:`~balance.record.StudyRecord` or frames made from one.
"""

from balance.analysis._comparisons import ALPHA, AxisTest, PairedDifference, Separation
from balance.analysis._frames import (
    FRAME_COLUMNS,
    GRID_INDEX,
    METRIC_LABELS,
    METRICS,
    audit,
    runs_frame,
    trials_frame,
)
from balance.analysis._grid import (
    CELL_STATUSES,
    GRID_COLUMNS,
    balance_grid,
    batch_size_table,
    bin_ranges,
    grid_axes,
    grid_key,
)
from balance.analysis._importance import Importances, param_importances
from balance.analysis._noise import (
    CellEstimate,
    NoiseAnalysis,
    analyse_noise,
    cell_runs,
    race_round,
)
from balance.analysis._summary import environment, summarize
from balance.analysis._tradeoff import (
    TREND_UNIT,
    BatchSizeBest,
    LevelBest,
    LrTradeoff,
    Trend,
    batch_size_sentence,
    batch_size_study,
    lr_tradeoff,
    tradeoff_sentence,
    weight_decay_trend,
)
from balance.analysis._verdict import (
    AXIS_WORDS,
    Cell,
    Effect,
    Verdict,
    balance_verdict,
    regularizer_effects,
)

__all__ = [
    "ALPHA",
    "AXIS_WORDS",
    "CELL_STATUSES",
    "FRAME_COLUMNS",
    "GRID_COLUMNS",
    "GRID_INDEX",
    "METRICS",
    "METRIC_LABELS",
    "TREND_UNIT",
    "AxisTest",
    "BatchSizeBest",
    "Cell",
    "CellEstimate",
    "Effect",
    "Importances",
    "LevelBest",
    "LrTradeoff",
    "NoiseAnalysis",
    "PairedDifference",
    "Separation",
    "Trend",
    "Verdict",
    "analyse_noise",
    "audit",
    "balance_grid",
    "balance_verdict",
    "batch_size_sentence",
    "batch_size_study",
    "batch_size_table",
    "bin_ranges",
    "cell_runs",
    "environment",
    "grid_axes",
    "grid_key",
    "lr_tradeoff",
    "param_importances",
    "race_round",
    "regularizer_effects",
    "runs_frame",
    "summarize",
    "tradeoff_sentence",
    "trials_frame",
    "weight_decay_trend",
]
