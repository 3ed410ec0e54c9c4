"""``fleetsentry edge run``: every service in ``edge/services.py`` as a supervised child process.

A child that exits is restarted after a backoff (1 s, doubling to 30 s; reset once it has run
for a minute). SIGTERM/SIGINT stop the supervisor in order: SIGTERM to every child, wait up to
``grace`` seconds, then SIGKILL whatever is left.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from edge.config import EdgeConfig
from edge.services import SERVICES, Service, process_count

log = logging.getLogger("supervisor")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0


@dataclass
class Child:
    service: Service
    instance: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_MIN_S
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.service.name}[{self.instance}]"


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies (even by SIGKILL), on Linux."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def child_argv(service: Service, instance: int, config_path: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "edge.cli", service.name, "--instance", str(instance)]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    return argv


class Supervisor:
    """Starts, watches and stops the children. Constructing it starts nothing."""

    def __init__(
        self,
        config: EdgeConfig,
        config_path: Path | None,
        only: frozenset[str] | None = None,
        grace: float = 10.0,
    ) -> None:
        self.grace = grace
        self.stop_event = threading.Event()
        self.children = [
            Child(svc, i, child_argv(svc, i, config_path))
            for svc in SERVICES
            if only is None or svc.name in only
            for i in range(process_count(svc, config))
        ]

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, preexec_fn=_die_with_parent)
        child.started = time.monotonic()
        log.info("started %s (pid %d)", child.label, child.proc.pid)

    def _check(self, child: Child, now: float) -> None:
        if child.proc is None:
            if now >= child.next_start:
                self._spawn(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        ran = now - child.started
        child.exits.append(code)
        child.proc = None
        child.restarts += 1
        if ran >= HEALTHY_AFTER_S:
            child.backoff = BACKOFF_MIN_S
        child.next_start = now + child.backoff
        log.warning(
            "%s exited with %d after %.1fs; restarting in %.0fs",
            child.label,
            code,
            ran,
            child.backoff,
        )
        child.backoff = min(BACKOFF_MAX_S, child.backoff * 2)

    def request_stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        self.stop_event.set()

    def run(self, install_signals: bool = True) -> int:
        """Supervise until asked to stop; returns 0 after an orderly shutdown."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        for child in self.children:
            self._spawn(child)
        while not self.stop_event.wait(0.2):
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
        self.shutdown()
        return 0

    def shutdown(self) -> list[str]:
        """SIGTERM every child, wait ``grace`` s, SIGKILL the rest; returns those killed."""
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        killed = []
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
                killed.append(child.label)
        if killed:
            log.warning("killed after %.0fs grace: %s", self.grace, killed)
        log.info("all services stopped")
        return killed
