"""The package's layout: one owner of what is stored, stages that never reach back, no
Optuna private names, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from study_files import ROOT, subprocess_env

PACKAGE = ROOT / "balance"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 450


def source(path: Path) -> str:
    return path.read_text()


def test_only_the_record_names_optunas_user_attributes() -> None:
    owners = [path.relative_to(ROOT) for path in MODULES if "user_attrs" in source(path)]
    assert owners == [Path("balance/record.py")]


NAMED_TUPLE_API = {"_asdict", "_fields", "_replace", "_make"}


def test_no_optuna_private_name_is_used() -> None:
    """No private module imported from Optuna, no private attribute of its objects read.

    An attribute starting with ``_`` must be balance's own (defined in the package) or
    NamedTuple's API; ``study._storage`` or ``trial._trial_id`` would be neither.
    """
    trees = {path: ast.parse(source(path)) for path in MODULES}
    own = {
        node.name if not isinstance(node, ast.Name) else node.id
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        or (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store))
    }
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
                names = [node.module or "", *(alias.name for alias in node.names)]
                found += [n for n in names if any(p.startswith("_") for p in n.split("."))]
            private = isinstance(node, ast.Attribute) and node.attr.startswith("_")
            if (
                private
                and not node.attr.startswith("__")
                and node.attr not in own | NAMED_TUPLE_API
            ):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
            text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if text and node.value.startswith("optuna.") and "._" in node.value:
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not found


def test_the_report_and_the_analysis_import_no_part_of_the_study_package() -> None:
    code = (
        "import sys, balance.report, balance.analysis, balance.record; "
        "print(sorted(m for m in sys.modules if m.startswith('balance.study') "
        "or m == 'balance.pipeline'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_no_report_module_imports_optuna() -> None:
    for path in (PACKAGE / "report").rglob("*.py"):
        tree = ast.parse(source(path))
        imported = [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if name.split(".")[0] == "optuna"], path.name


def test_no_module_is_over_the_line_limit() -> None:
    long = {path.name: n for path in MODULES if (n := len(source(path).splitlines())) > MAX_LINES}
    assert not long
