"""Transactional Kafka calls under a deadline the process keeps, not only the client library.

librdkafka's ``send_offsets_to_transaction()`` can block past its own timeout, indefinitely,
when the group coordinator goes away during the call (confluentinc/librdkafka#5456, open in
librdkafka 2.16): after the edge Kafka was killed and started again, the enricher sat in that
call for minutes while acknowledged events piled up in ``raw.*``, alive, logging nothing, and
never restarted by the supervisor. So the enricher and the scorer make every blocking
transactional call under :class:`Watchdog`: a call still running ``grace_s`` after its own
timeout ends the process (exit code ``EXIT_STUCK``), and the supervisor (or systemd) starts the
service again. Nothing is lost or written twice: the next instance's ``init_transactions()``
with the same ``transactional.id`` aborts the transaction left open, and it consumes again from
the last committed offsets.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# EX_TEMPFAIL: a temporary failure, start again.
EXIT_STUCK = 75
GRACE_S = 30.0


def _exit(code: int) -> None:
    logging.shutdown()  # flush the handlers: the reason must reach the log
    os._exit(code)


class Watchdog:
    """One monitor thread; ``with watchdog.deadline(what, timeout_s):`` arms it for a call."""

    def __init__(self, service: str, grace_s: float = GRACE_S, tick_s: float = 1.0,
                 on_stuck: Callable[[int], None] = _exit) -> None:
        self.service = service
        self.grace_s = grace_s
        self.tick_s = tick_s
        self.on_stuck = on_stuck
        self._armed: tuple[str, float, float] | None = None  # (what, timeout, until)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def deadline(self, what: str, timeout_s: float) -> Iterator[None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"{self.service}-watchdog",
                                            daemon=True)
            self._thread.start()
        with self._lock:
            self._armed = (what, timeout_s, time.monotonic() + timeout_s + self.grace_s)
        try:
            yield
        finally:
            with self._lock:
                self._armed = None

    def call(self, what: str, timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args, timeout_s)`` under the deadline (the client's own timeout is the last
        argument of every transactional call)."""
        with self.deadline(what, timeout_s):
            return fn(*args, timeout_s)

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick_s)
            with self._lock:
                armed = self._armed
            if armed is None or time.monotonic() < armed[2]:
                continue
            what, timeout_s, _until = armed
            log.critical("%s: %s has not returned %.0f s after its own %.0f s timeout (the Kafka "
                         "client can block past it when the broker goes away mid-call): exiting "
                         "with %d so that it is started again; the open transaction is aborted "
                         "by the next instance, which resumes from the last commit",
                         self.service, what, self.grace_s, timeout_s, EXIT_STUCK)
            self.on_stuck(EXIT_STUCK)
            return
