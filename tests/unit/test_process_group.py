"""ProcessGroup: children in sessions of their own, stopped together (grandchildren too)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from shared.infra import process
from shared.process_group import ProcessGroup, signals_held

# A child that starts a grandchild in its process group, then waits.
PARENT = [
    sys.executable,
    "-c",
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n",
]
# One that ignores SIGTERM.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n",
]


def _wait_ready(log: Path) -> None:
    deadline = time.monotonic() + 10
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.05)


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def test_close_stops_each_child_with_what_it_started(tmp_path: Path) -> None:
    group = ProcessGroup(grace=5)
    proc = group.popen(PARENT, tmp_path / "a.log")
    _wait_ready(tmp_path / "a.log")
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) == 2
    assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # a session of its own
    assert group.alive() == [proc.pid]
    started = time.monotonic()
    assert group.close() == []
    assert time.monotonic() - started < 5
    assert _gone(tree)
    assert group.alive() == []
    assert group.close() == []  # again: nothing to do


def test_one_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    with ProcessGroup(grace=0.5) as group:
        proc = group.popen(STUBBORN, tmp_path / "b.log")
        _wait_ready(tmp_path / "b.log")
    assert proc.returncode == -signal.SIGKILL
    group.add(proc)
    assert group.close() == []  # already gone


def test_adopting_records_what_infra_spawns(tmp_path: Path) -> None:
    group = ProcessGroup(grace=5)
    with group.adopting():
        pid = process.spawn(PARENT, tmp_path / "c.pid", tmp_path / "c.log")
    outside = process.spawn(STUBBORN, tmp_path / "d.pid", tmp_path / "d.log")
    try:
        assert group.pids == [pid]
        _wait_ready(tmp_path / "c.log")
        tree = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
        group.close()
        assert _gone(tree)
    finally:
        process.stop([outside], timeout=0.5)


def test_a_signal_during_signals_held_arrives_after_it() -> None:
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
