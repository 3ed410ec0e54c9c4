"""The dashboard's code stays in small pieces: no function over 60 lines, ``create_app`` well
under that (it assembles the route modules' lists)."""

from __future__ import annotations

import ast
from pathlib import Path

import cloud.dashboard

PACKAGE = Path(cloud.dashboard.__file__).parent
MAX_LINES = 60


def functions() -> list[tuple[int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                found.append((lines, f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"))
    return found


def test_no_function_of_the_dashboard_is_over_60_lines() -> None:
    found = functions()
    assert len(found) > 100, "the walk found the dashboard's functions"
    long = sorted(f for f in found if f[0] > MAX_LINES)
    assert not long, f"split these (lines, where): {long}"


def test_create_app_only_assembles_the_route_modules() -> None:
    [(lines, _)] = [
        f for f in functions() if f[1].startswith("app.py") and f[1].endswith(" create_app")
    ]
    assert lines < 30
