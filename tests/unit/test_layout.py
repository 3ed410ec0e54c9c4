"""Layout rules: every package is shipped, and edge and cloud never import each other."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = {
    "shared": "shared",
    "edge": "edge",
    "cloud": "cloud",
    "firmware_sim": "firmware-sim",
}


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in PACKAGE_ROOTS.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = _packages_on_disk()
    missing = on_disk - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    # A listed package that is not in the tree breaks `pip install` on a fresh clone. Data
    # folders (baseline models, dashboard templates) are listed too, with no __init__.py.
    absent = {p for p in listed - on_disk if not _folder(p).is_dir()}
    assert not absent, f"pyproject.toml lists packages with no folder: {sorted(absent)}"


def _folder(package: str) -> Path:
    root, *rest = package.split(".")
    return ROOT / PACKAGE_ROOTS.get(root, root) / Path(*rest)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_import_boundaries() -> None:
    forbidden = {
        "edge": {"cloud", "firmware_sim"},
        # The cloud learns from files and topics the simulator writes, never from its code:
        # generate training data with `fleetsentry sim run --dry-run` instead.
        "cloud": {"edge", "firmware_sim"},
        "shared": {"edge", "cloud", "firmware_sim"},
        "firmware_sim": {"edge", "cloud"},
    }
    bad = []
    for name, folder in PACKAGE_ROOTS.items():
        for path in (ROOT / folder).rglob("*.py"):
            hits = _imports(path) & forbidden[name]
            if hits:
                bad.append(f"{path.relative_to(ROOT)} imports {sorted(hits)}")
    assert not bad, "docs/architecture.md: edge and cloud share only through shared/\n" + "\n".join(
        bad
    )


def test_every_test_folder_is_a_package() -> None:
    # Two test folders with the same name (tests/unit/store, tests/integration/store) clash
    # at collection unless each is a package with a unique dotted name.
    bare = [
        str(d.relative_to(ROOT))
        for d in (ROOT / "tests").rglob("*")
        if d.is_dir()
        and d.name != "__pycache__"
        and any(d.glob("*.py"))
        and not (d / "__init__.py").exists()
    ]
    assert not bare, f"add an __init__.py to: {bare}"


MAX_FUNCTION_LINES = 60
# Functions that are data tables, not steps: "<path>:<name>" (keep this list short).
LONG_DATA_TABLES: set[str] = set()


def _long_functions(limit: int) -> list[str]:
    """``path:name (n lines)`` of every package function longer than ``limit`` lines, from its
    ``def`` line (decorators excluded) to its last line."""
    out = []
    for folder in PACKAGE_ROOTS.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{path.relative_to(ROOT)}:{node.name}"
                if lines > limit and where not in LONG_DATA_TABLES:
                    out.append(f"{where} ({lines} lines)")
    return out


def test_package_functions_are_at_most_60_lines() -> None:
    too_long = _long_functions(MAX_FUNCTION_LINES)
    assert not too_long, (
        f"split these into named steps (at most {MAX_FUNCTION_LINES} lines each): {too_long}"
    )
