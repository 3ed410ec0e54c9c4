"""``fleetsentry cloud run`` keeps its signer running: a signer that exits (one of its loops
failed: exit 1 and an ``error:`` line) or is killed is noticed at once, logged with its exit
code (and its last error line), and started again, so the dashboard's requests keep being
carried out."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from cloud.dashboard.cli import Server, start_signer
from cloud.dashboard.keeper import HEALTHY_AFTER_S, Keeper
from shared import signing

# A signer that comes up needs neither Kafka nor a schedule here: requests only.
OPTIONS = {"no_publish": True, "no_schedule": True}
LIMIT_S = 20.0


def _live_signers() -> list[int]:
    """This process's live ``python -m cloud.signer`` children (zombies left out)."""
    out = []
    for p in psutil.Process().children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "cloud.signer" in p.cmdline():
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _until(what: str, check: Callable[[], Any], limit: float = LIMIT_S) -> Any:
    deadline = time.monotonic() + limit
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {limit:.0f} s: {what}"
        time.sleep(0.02)
    return found


def _config(tmp_path: Path, registry: Path) -> tuple[Path, Path]:
    key = tmp_path / "signing.key"
    signing.create_private_key(key)
    toml = tmp_path / "cloud.toml"
    toml.write_text(
        f'[registry]\nroot = "{registry}"\n[kafka]\nbootstrap = "127.0.0.1:9"\nsecurity = "none"\n'
    )
    return toml, key


@pytest.fixture()
def server() -> Iterator[Server]:
    """A ``cloud run`` server without its dashboard parts: only the signer it starts."""
    closable = SimpleNamespace(close=lambda: None)
    s = Server(app=None, dash=SimpleNamespace(store=closable), watcher=closable, actions=closable)
    yield s
    s.close()
    assert not _live_signers(), "a signer outlived the server"


def _restarted_after(first: int) -> int:
    """The signer started in place of ``first``: alive, and still alive a moment later."""
    pid = _until(
        f"a signer started again after pid {first} ended",
        lambda: next((p for p in _live_signers() if p != first), None),
    )
    time.sleep(1.5)
    assert pid in _live_signers(), f"the new signer (pid {pid}) did not stay up"
    return int(pid)


def _exit_logged(caplog: pytest.LogCaptureFixture, pid: int, *words: str) -> str:
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    found = [m for m in messages if str(pid) in m and all(w in m for w in words)]
    assert found, f"no warning naming pid {pid} and {words}: {messages}"
    return found[0]


def test_a_signer_that_fails_is_logged_and_started_again(
    tmp_path: Path, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    registry = tmp_path / "registry"
    registry.write_text("")  # not a directory: both loops fail, the signer exits 1
    toml, key = _config(tmp_path, registry)
    server.signer = start_signer(toml, key, OPTIONS)
    (first,) = _until("the signer started", _live_signers)
    _until(f"the failing signer (pid {first}) exited", lambda: _gone(first))
    registry.unlink()  # the next signer can open its registry

    second = _restarted_after(first)

    message = _exit_logged(caplog, first, "exited with code 1", "error: the signer stopped")
    assert "NotADirectoryError" in message
    assert second != first


def test_a_killed_signer_is_logged_and_started_again(
    tmp_path: Path, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    toml, key = _config(tmp_path, tmp_path / "registry")
    server.signer = start_signer(toml, key, OPTIONS)
    (first,) = _until("the signer started", _live_signers)
    time.sleep(1.0)  # up and serving
    os.kill(first, signal.SIGKILL)

    _restarted_after(first)

    _exit_logged(caplog, first, "exited with code -9", "SIGKILL")


def test_restarts_back_off_from_1_to_30_s_and_reset_after_a_healthy_run() -> None:
    keeper = Keeper("a failing child", [sys.executable, "-c", "raise SystemExit(3)"])
    now = 0.0
    keeper.check(now)  # started
    delays: list[float] = []
    for _ in range(7):
        assert keeper.proc is not None
        keeper.proc.wait()
        keeper.check(now)  # its exit noticed
        assert keeper.proc is None
        delays.append(keeper.next_start - now)
        keeper.check(keeper.next_start - 0.1)  # not yet
        assert keeper.proc is None
        now = keeper.next_start
        keeper.check(now)  # started again
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert keeper.exits == [3] * 7

    assert keeper.proc is not None
    keeper.proc.wait()
    keeper.check(now + HEALTHY_AFTER_S)  # it had run for a minute
    assert keeper.next_start - (now + HEALTHY_AFTER_S) == 1
    keeper.hold()
    keeper.check(keeper.next_start)
    assert keeper.proc is None, "a held keeper starts nothing"
    keeper.close()
