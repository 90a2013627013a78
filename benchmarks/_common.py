"""What every benchmark script shares: machine facts, interleaved repeats, JSON, the table.

Each script measures its figures as ratios of variants run side by side in one
process, alternating their order from repeat to repeat, and keeps the median of
the repeats (these machines are shared and noisy). It writes
``<out-dir>/<name>.json`` with the machine it ran on and a ``headline`` list, then
rewrites ``<out-dir>/README.md``: one markdown table of every JSON in the folder
(a JSON without a ``headline``, such as one another script writes, is shown by its
top-level numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from balance.jsonable import jsonable

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
T = TypeVar("T")
# What a benchmark measures besides its own script: a change here makes its figures stale.
MEASURED = ("balance", "pyproject.toml")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=BENCHMARKS.parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def code_version(name: str) -> dict[str, Any]:
    """The commit a benchmark runs on, and whether the code it measures had local changes."""
    paths = [*MEASURED, f"benchmarks/{name}.py", "benchmarks/_common.py"]
    changes = _git("status", "--porcelain", "--", *paths)
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(changes)}


def freshness(name: str, code: dict[str, Any] | None) -> str:
    """``current``, or why a result no longer speaks for the code: run on an older commit
    than the last change to what it measures, with local changes, or on an unknown one."""
    commit = (code or {}).get("commit")
    if not commit:
        return "**unknown commit**"
    paths = [*MEASURED, f"benchmarks/{name}.py", "benchmarks/_common.py"]
    last = _git("log", "-1", "--format=%H", "--", *paths)
    short = commit[:8]
    if last is None:
        return short
    if _git("merge-base", "--is-ancestor", last, commit) is None:
        return f"**stale** ({short}; code changed in {last[:8]})"
    return f"{short} (dirty)" if code and code.get("dirty") else short


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Cores, torch threads and version, CPU model and the load average, taken now."""
    import optuna
    import torch

    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "load_average_at_start": load,
        "cuda": torch.cuda.is_available(),
    }


def median(values: Sequence[float]) -> float:
    """The median (of an odd or even number of repeats)."""
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> list[float]:
    """``[min, max]`` of the repeats, to show next to their median."""
    return [float(min(values)), float(max(values))]


def interleaved(variants: dict[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Run every variant once per repeat, rotating their order, and collect the results.

    Rotation spreads slow spells of a shared machine over all variants instead of
    letting one of them always run first (cold) or last.
    """
    names = list(variants)
    out: dict[str, list[T]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(variants[name]())
    return out


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark script accepts (``nox -s bench -- --quick`` passes them all)."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument(
        "--quick", action="store_true", help="a fast smoke run: tiny budgets, numbers meaningless"
    )
    arguments.add_argument(
        "--out-dir", type=Path, default=RESULTS, help="folder for <name>.json and README.md"
    )
    return arguments


def headline(measure: str, value: str, target: str = "", met: bool | None = None) -> dict[str, Any]:
    """One row of the results table: what was measured, the figure, the target, met or not."""
    return {"measure": measure, "value": value, "target": target, "met": met}


def write_result(
    name: str,
    payload: dict[str, Any],
    *,
    out_dir: Path,
    quick: bool,
    started: float,
    machine_info: dict[str, Any],
    headlines: list[dict[str, Any]],
) -> Path:
    """Write ``<out_dir>/<name>.json`` (strict JSON) and rewrite the folder's README.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "quick": quick,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine_info,
        "code": code_version(name),
        "headline": headlines,
        **payload,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(jsonable(document), indent=1, allow_nan=False) + "\n")
    write_readme(out_dir)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (``|`` inside cells escaped)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "---|" * len(headers),
    ]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _met(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[value]


def _foreign_rows(name: str, document: dict[str, Any]) -> list[list[Any]]:
    # A JSON written by a script that does not use this module: show its top-level numbers.
    numbers = {
        key: round(value, 4) if isinstance(value, float) else value
        for key, value in document.items()
        if (isinstance(value, int | float) and not isinstance(value, bool))
        or (isinstance(value, str) and len(value) <= 60)
    }
    shown = ", ".join(f"{key}={value}" for key, value in list(numbers.items())[:8])
    return [[name, "(top-level values)", shown or "see JSON", "", ""]]


def results_table(out_dir: Path) -> str:
    """The markdown of every ``*.json`` in ``out_dir``: results, then the machines."""
    rows: list[list[Any]] = []
    machines: list[list[Any]] = []
    for path in sorted(out_dir.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(document, dict):
            continue
        name = str(document.get("benchmark", path.stem))
        code = freshness(name, document.get("code"))
        if document.get("quick"):
            name += " (quick)"
        if isinstance(document.get("headline"), list):
            for row in document["headline"]:
                met = _met(row["met"])
                rows.append([name, row["measure"], row["value"], row.get("target", ""), met, code])
        else:
            rows += [[*row, code] for row in _foreign_rows(name, document)]
        info = document.get("machine")
        if isinstance(info, dict):
            load = info.get("load_average_at_start") or info.get("load_average")
            machines.append(
                [
                    name,
                    info.get("cores", ""),
                    info.get("torch_threads", info.get("threads", "")),
                    info.get("torch", ""),
                    info.get("cpu", ""),
                    " / ".join(str(v) for v in load) if isinstance(load, list) else "",
                    document.get("finished", ""),
                    document.get("seconds", ""),
                ]
            )
    parts = [
        markdown_table(["benchmark", "measure", "result", "target", "met", "code"], rows),
        "",
        markdown_table(
            [
                "benchmark",
                "cores",
                "torch threads",
                "torch",
                "CPU",
                "load avg at start (1/5/15 min)",
                "finished (UTC)",
                "seconds",
            ],
            machines,
        ),
    ]
    return "\n".join(parts)


def write_readme(out_dir: Path) -> Path:
    """Rewrite ``out_dir/README.md`` from the JSON results in the folder."""
    path = out_dir / "README.md"
    path.write_text(
        "# Benchmark results\n\n"
        "Written by `nox -s bench` (each script rewrites this file from every JSON here).\n"
        "Every ratio is the median of interleaved repeats measured side by side in one run;\n"
        "each JSON holds the repeats, the settings and how each figure was counted.\n"
        "`code` is the commit a row ran on; **stale** marks a row run before the last change\n"
        "to the code it measures (`balance/`, `pyproject.toml`, its script), so it no longer\n"
        "speaks for this version.\n\n" + results_table(out_dir) + "\n"
    )
    return path


def main(argv: list[str] | None = None) -> int:
    """Rewrite ``<out-dir>/README.md`` from the JSON results there."""
    args, _ = parser(__doc__.splitlines()[0]).parse_known_args(argv)
    print(write_readme(args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
