"""`fleetsentry edge run`: children per service, restart after a crash, orderly SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.infra.ports import free_ports, is_free
from shared.infra.stack import Stack
from tests.bridge_support import ROOT, drop_session, unique, write_edge_toml

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text: str = resp.read().decode()
            return text
    except OSError:
        return None


def free_base_port() -> int:
    """A port p with p and p + 10 free (bridge instances 0 and 1)."""
    for _ in range(100):
        p = free_ports(1)[0]
        if p + 10 < 65500 and is_free("127.0.0.1", p + 10):
            return p
    raise AssertionError("no free port pair")


def test_supervisor_runs_restarts_and_stops_the_bridges(stack: Stack, tmp_path: Path) -> None:
    edge_id, group = unique("sup"), unique("g")
    base = free_base_port()
    config = write_edge_toml(tmp_path / "edge.toml", stack, edge_id, group, extra="processes = 2\n")
    text = config.read_text().replace("base_port = 0", f"base_port = {base}")
    config.write_text(text)
    log = (tmp_path / "supervisor.log").open("wb")
    sup = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            str(config),
            "--service",
            "bridge",
            "--grace",
            "10",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        kids = wait_for(
            lambda: len(children(sup.pid)) == 2 and children(sup.pid), 30, "two bridge processes"
        )
        # Each process serves its own metrics port: base + 10 * instance.
        wait_for(lambda: scrape(base) and scrape(base + 10), 60, "both metrics endpoints")
        victim = min(kids)
        os.kill(victim, signal.SIGKILL)
        new = wait_for(
            lambda: (c := children(sup.pid)) - kids and len(c) == 2 and c,
            30,
            "a replacement process",
        )
        assert victim not in new
        wait_for(lambda: scrape(base) and scrape(base + 10), 60, "metrics after restart")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
        for pid in new:
            assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived the supervisor"
        out = (tmp_path / "supervisor.log").read_text()
        assert "exited with -9" in out and "all services stopped" in out
        assert "killed after" not in out, "a bridge ignored SIGTERM"
    finally:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
            try:
                sup.wait(30)
            except subprocess.TimeoutExpired:
                sup.kill()  # its children get SIGTERM from the kernel (parent-death signal)
                sup.wait()
        log.close()
        for i in range(2):
            drop_session(stack, f"{edge_id}-bridge-{i}")
