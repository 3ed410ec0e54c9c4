"""A child process kept running: the signer ``fleetsentry cloud run`` starts beside the
dashboard.

A child that exits (whatever its exit code, or killed by a signal) is noticed within
``poll_s``, logged with its exit code and the last ``error:`` line it wrote, and started
again after a backoff: 1 s, doubling to 30 s, back to 1 s once it has run for a minute (as
``fleetsentry edge run`` keeps the gateway's services). The child's stderr passes through to
this process's stderr. :meth:`Keeper.hold` ends the restarts (the dashboard is stopping);
:meth:`Keeper.close` also stops the child.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from shared.infra.process import end_child

log = logging.getLogger("cloud-run")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
POLL_S = 0.2
# How long an exit waits for the child's last stderr lines to come through.
DRAIN_S = 2.0
ERROR_PREFIX = b"error:"


def _describe_code(code: int) -> str:
    """``1``, or ``-9 (SIGKILL)`` for a child a signal ended."""
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


def _pass_on(stream: IO[bytes], errors: list[str]) -> None:
    """Copy the child's stderr to ours line by line, keeping its ``error:`` lines."""
    with stream:
        for line in stream:
            text = line.decode(errors="replace")
            if line.startswith(ERROR_PREFIX):
                errors.append(text.strip())
                del errors[:-1]  # the last one is all that is reported
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is closed: keep draining the pipe
                pass


class Keeper:
    """Starts ``argv`` and starts it again whenever it exits, until :meth:`hold` or
    :meth:`close`. Constructing it starts nothing: :meth:`start` does, or :meth:`check`
    called by hand (with any clock)."""

    def __init__(self, name: str, argv: Sequence[str], poll_s: float = POLL_S) -> None:
        self.name = name
        self.argv = list(argv)
        self.poll_s = poll_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = BACKOFF_MIN_S
        self.next_start = 0.0
        self.exits: list[int] = []
        self._errors: list[str] = []
        self._relay: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._lock = threading.Lock()
        self._held = threading.Event()
        self._stop = threading.Event()

    @property
    def pid(self) -> int | None:
        """The running child's pid (None between an exit and its restart)."""
        proc = self.proc
        return None if proc is None else proc.pid

    def start(self) -> Keeper:
        """Start the child now, and watch it from a thread."""
        self.check(time.monotonic())
        self._watch = threading.Thread(target=self._run, name=f"keeper {self.name}", daemon=True)
        self._watch.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Start the child if it is due; log an exit and schedule the restart."""
        with self._lock:
            if self.proc is None:
                if now >= self.next_start and not self._held.is_set():
                    self._spawn(now)
                return
            code = self.proc.poll()
            if code is not None:
                self._exited(code, now)

    def _spawn(self, now: float) -> None:
        proc = subprocess.Popen(self.argv, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        self.proc, self.started, self._errors = proc, now, []
        self._relay = threading.Thread(
            target=_pass_on,
            args=(proc.stderr, self._errors),
            name=f"{self.name} stderr",
            daemon=True,
        )
        self._relay.start()
        log.info("started %s (pid %d)", self.name, proc.pid)

    def _exited(self, code: int, now: float) -> None:
        assert self.proc is not None
        pid, ran = self.proc.pid, now - self.started
        if self._relay is not None:
            self._relay.join(DRAIN_S)
        self.proc = None
        self.exits.append(code)
        what = f"{self.name} (pid {pid}) exited with code {_describe_code(code)} after {ran:.1f}s"
        if self._errors:
            what += f": {self._errors[-1]}"
        if self._held.is_set():
            log.log(logging.INFO if code == 0 else logging.WARNING, "%s", what)
            return
        if ran >= HEALTHY_AFTER_S:
            self.backoff = BACKOFF_MIN_S
        self.next_start = now + self.backoff
        log.warning("%s; starting it again in %.0fs", what, self.backoff)
        self.backoff = min(BACKOFF_MAX_S, self.backoff * 2)

    def hold(self) -> None:
        """Start the child no more (it may still be running)."""
        self._held.set()

    def close(self, grace: float = 30.0) -> None:
        """Stop watching, then SIGTERM the child, wait up to ``grace`` s, SIGKILL it if it is
        still there. Safe to call more than once."""
        self.hold()
        self._stop.set()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join()
        with self._lock:
            proc, relay = self.proc, self._relay
        if proc is not None and proc.poll() is None:
            end_child(proc, grace)
        if relay is not None:
            relay.join(DRAIN_S)
