"""Figures and reports of balance's results: pure functions of a study record."""

from balance.report.html import build_report
from balance.report.plots import plot_range_test, save_figure

__all__ = ["build_report", "plot_range_test", "save_figure"]
