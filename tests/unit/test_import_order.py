"""Every module of the shared package imports first, in an interpreter where nothing of the
package is loaded yet: a gateway's tools import one of them alone (the Ansible role runs
``from shared.declarations.catalog import declared``), and an import cycle shows only then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import importlib, pkgutil, sys, traceback
import shared
names = sorted(m.name for m in pkgutil.walk_packages(shared.__path__, "shared."))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "shared" or m.startswith("shared.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print(len(names))
print("\\n".join(failed))
"""


def test_every_shared_module_imports_first() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    count, *failed = out.stdout.strip().splitlines()
    assert int(count) > 50
    assert not [f for f in failed if f], failed
