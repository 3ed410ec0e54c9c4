"""Stopping detached processes (shared/infra/process.py) without touching anyone else's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from shared.infra import process


def test_stop_leaves_the_exit_status_of_other_children_to_their_owner(tmp_path: Path) -> None:
    # A child of this process that has nothing to do with the one being stopped, already
    # exited with 3 and not yet waited for by its owner (a zombie).
    other = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{other.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the other child did not exit"
        time.sleep(0.02)
    pid = process.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        tmp_path / "p.pid",
        tmp_path / "p.log",
    )
    assert process.stop([pid], timeout=10) == []  # SIGTERM was enough
    assert not Path(f"/proc/{pid}").exists(), "the stopped child was left a zombie"
    # Its owner still gets the real status (a wait on any child would have taken it: 0).
    assert other.wait(5) == 3
