"""What ``balance sweep`` prints when it finishes: the study's answer, from ``summary.json``."""

from __future__ import annotations

from typing import Any

import typer


def print_summary(summary: dict[str, Any]) -> None:
    """The best setting with its interval, the LR axis' findings and the test figures."""
    best = summary.get("best")
    lrs = ", ".join(f"batch {size}: {lr:.4g}" for size, lr in summary["max_lr"].items())
    typer.echo(f"max_lr: {lrs}")
    typer.echo(f"trials: {summary['trials']}")
    if best is None:
        return
    params = ", ".join(f"{name} {value}" for name, value in best["params"].items())
    typer.echo(
        f"best (trial {best['trial']}): {params}; val_accuracy "
        f"{best['val_accuracy']:.4f} +- {best['val_accuracy_std']:.4f}"
    )
    interval = best.get("val_accuracy_interval")
    if interval:
        close = len(summary.get("indistinguishable") or []) - 1
        detectable = [name for name, axis in summary.get("axes", {}).items() if axis["detectable"]]
        typer.echo(
            f"  {100 * interval['level']:.0f}% interval {interval['low']:.4f} .. "
            f"{interval['high']:.4f}; {close} other cell(s) indistinguishable from it; "
            f"detectable effects: {', '.join(detectable) or 'none'}"
        )
    for name in ("chosen", "baseline"):
        test = summary["test"].get(name)
        if test and test.get("test_accuracy") is not None:
            typer.echo(
                f"test_accuracy ({name}): {test['test_accuracy']:.4f} "
                f"+- {test['test_accuracy_std']:.4f}"
            )
    difference = summary.get("test_difference")
    if difference:
        typer.echo(
            f"chosen - baseline on test: {difference['difference']:+.4f} "
            f"({100 * difference['level']:.0f}% interval {difference['low']:+.4f} .. "
            f"{difference['high']:+.4f}; {'beyond' if difference['beyond_noise'] else 'within'} "
            "noise)"
        )
    for line in lr_axis_lines(summary):
        typer.echo(line)


def lr_axis_lines(summary: dict[str, Any]) -> list[str]:
    """The trade-off's trend, the batch-size exponent and the noise scales, one line each."""
    lines = []
    tradeoff = summary.get("lr_tradeoff")
    if tradeoff:
        trend = tradeoff["trend"]
        lines.append(
            f"best weight decay as the LR grows: {trend['direction']} ({trend['slope']:+.2f} "
            f"{trend['unit']}; {100 * trend['level']:.0f}% interval {trend['low']:+.2f} .. "
            f"{trend['high']:+.2f})"
        )
    scaling = summary.get("batch_scaling")
    if scaling and scaling.get("low") is not None:
        lines.append(
            f"max_lr ~ B^k: k = {scaling['k']:.2f} ({100 * scaling['level']:.0f}% interval "
            f"{scaling['low']:.2f} .. {scaling['high']:.2f}); linear rule "
            f"{'inside' if scaling['rules']['linear'] else 'outside'}, square-root rule "
            f"{'inside' if scaling['rules']['sqrt'] else 'outside'}"
        )
    scales = summary.get("noise_scale") or {}
    if scales:
        shown = ", ".join(
            f"batch {size}: {scale['b_simple']:.0f}"
            if scale["b_simple"] is not None
            else f"batch {size}: unresolved"
            for size, scale in scales.items()
        )
        lines.append(f"gradient noise scale B_simple (first epoch): {shown}")
    return lines
