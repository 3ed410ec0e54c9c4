"""The signer's two loops (requests, training) stand or fall together: when one of them ends
because of an error, at its start or later, ``serve`` logs the cause, stops the other loop
and raises an error naming the loop and the cause, so that the process exits non-zero and
its supervisor restarts it instead of leaving a signer that looks alive but does no work."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloud.registry import Registry
from cloud.signer.signer import SignerStopped, serve
from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService
from shared import signing
from tests.dashboard_support import MemorySource

SETTINGS = RetrainSettings(streams=("telemetry",), drift_check_s=3600.0, seed_baselines=False)
LOOPS = ("signer-requests", "signer-training")


def _serve(root: Path, make_trainer: Any) -> tuple[BaseException | None, threading.Event]:
    """Run ``serve`` in a thread for at most 20 s; returns what it raised (None: nothing)
    and the stop event it was given (never set while it ran)."""
    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            serve(
                root,
                make_trainer,
                None,
                stop,
                streams=("telemetry",),
                poll_s=0.05,
                train_poll_s=0.05,
            )
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    t = threading.Thread(target=run, name="test-serve", daemon=True)
    t.start()
    t.join(20)
    alive = t.is_alive()
    if alive:
        stop.set()
        t.join(20)
    assert not alive, "serve() kept running after one of its loops ended"
    assert not stop.is_set()
    return (raised[0] if raised else None), stop


def _loops_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in LOOPS and t.is_alive()]


def _trainer(reg: Registry) -> TrainerService:
    return TrainerService(reg, MemorySource({}, []), signing.generate_private_key(), SETTINGS)


@pytest.mark.timeout(60)
def test_a_loop_that_cannot_start_stops_the_signer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def make_trainer(reg: Registry) -> TrainerService:
        if threading.current_thread().name == "signer-training":
            raise RuntimeError("no training data source configured")
        return _trainer(reg)

    with caplog.at_level(logging.INFO, logger="signer"):
        exc, _stop = _serve(tmp_path / "registry", make_trainer)

    assert isinstance(exc, SignerStopped), exc
    assert "signer-training" in str(exc)
    assert "RuntimeError: no training data source configured" in str(exc)
    assert isinstance(exc.__cause__, RuntimeError)
    assert _loops_alive() == [], "the other loop was left running"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "signer-training" in r.getMessage()
        and "no training data source configured" in r.getMessage()
        for r in errors
    ), [r.getMessage() for r in caplog.records]


@pytest.mark.timeout(60)
def test_a_registry_that_cannot_be_opened_stops_the_signer(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.write_text("not a directory")  # both loops fail to open it

    exc, _stop = _serve(root, _trainer)

    assert isinstance(exc, SignerStopped), exc
    assert str(root) in str(exc)
    assert _loops_alive() == []


@pytest.mark.timeout(60)
def test_a_loop_ended_later_by_an_error_its_pass_does_not_catch_stops_the_signer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passes = 0

    class Exiting(TrainerService):
        def cycle(self, now: float | None = None) -> list[Any]:
            nonlocal passes
            passes += 1
            if passes == 3:
                raise SystemExit("a library gave up")
            return []

    def make_trainer(reg: Registry) -> TrainerService:
        return Exiting(reg, MemorySource({}, []), signing.generate_private_key(), SETTINGS)

    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="signer"):
        exc, _stop = _serve(tmp_path / "registry", make_trainer)

    assert passes == 3
    assert isinstance(exc, SignerStopped), exc
    assert "signer-training" in str(exc) and "SystemExit: a library gave up" in str(exc)
    assert _loops_alive() == []
    assert time.monotonic() - started < 20
    assert any(
        r.levelno >= logging.ERROR and "a library gave up" in r.getMessage() for r in caplog.records
    )


@pytest.mark.timeout(60)
def test_stopping_the_signer_ends_both_loops_without_an_error(tmp_path: Path) -> None:
    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            serve(tmp_path / "registry", _trainer, None, stop, poll_s=0.05, train_poll_s=0.05)
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while len(_loops_alive()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert t.is_alive()
    stop.set()
    t.join(20)
    assert not t.is_alive()
    assert raised == []
    assert _loops_alive() == []
