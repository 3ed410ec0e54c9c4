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

    def __init__(
        self,
        service: str,
        grace_s: float = GRACE_S,
        tick_s: float = 1.0,
        on_stuck: Callable[[int], None] = _exit,
    ) -> None:
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
            self._thread = threading.Thread(
                target=self._watch, name=f"{self.service}-watchdog", daemon=True
            )
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
            log.critical(
                "%s: %s has not returned %.0f s after its own %.0f s timeout (the Kafka "
                "client can block past it when the broker goes away mid-call): exiting "
                "with %d so that it is started again; the open transaction is aborted "
                "by the next instance, which resumes from the last commit",
                self.service,
                what,
                self.grace_s,
                timeout_s,
                EXIT_STUCK,
            )
            self.on_stuck(EXIT_STUCK)
            return


class AssignmentGuard:
    """How long a group consumer has held no partition, and when that is too long.

    librdkafka can leave a static group member (``group.instance.id``) with no partitions
    after its session timed out while the broker was away: it logs "Consumer group session
    timed out ... revoking" and then consumes nothing, raises nothing and never rejoins
    (confluentinc/librdkafka#3437, open; seen here after the edge Kafka was killed and started
    again). A service that should always hold partitions (one instance per gateway) calls
    :meth:`check` with its current assignment; past ``limit_s`` without one it gets the
    seconds waited, and ends the process so the supervisor starts it again: a new consumer
    joins at once, and nothing is lost (offsets commit with the transactions).
    """

    def __init__(
        self, limit_s: float, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit_s = limit_s
        self.every_s = every_s
        self.clock = clock
        self._since: float | None = clock()  # no partitions yet at start
        self._next = 0.0

    def due(self) -> bool:
        """Whether it is time to look at the assignment again (it costs a call)."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True

    def check(self, holding: bool) -> float | None:
        """``holding``: the consumer holds at least one partition now. Returns the seconds
        without one once over ``limit_s``, else None."""
        now = self.clock()
        if holding:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        waited = now - self._since
        return waited if waited > self.limit_s else None
