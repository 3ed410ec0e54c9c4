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

The watchdog ends a call that hung; :class:`KafkaLoss` keeps the call from being made. The
hang follows the edge Kafka going away (every broker down, a restart): the client's cached
coordinators are stale then. So after such a loss the next commit does not send its offsets:
it waits for the broker to be back and ends the process the same way, at once instead of a
minute later (in the chaos run, each restart of the edge Kafka cost the enricher and then the
scorer a minute each).

A service told to stop (SIGTERM) while Kafka is away must not wait for it: a call the
watchdog is guarding that is still running :data:`STOP_WAIT_S` after the stop was asked for,
and the wait for Kafka after a loss, end the process at once (exit 0) instead of outliving the
supervisor's grace and being killed. The open transaction is aborted by the next instance,
as after :data:`EXIT_STUCK`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from shared.kafka_errors import ErrorLog

log = logging.getLogger(__name__)

# EX_TEMPFAIL: a temporary failure, start again.
EXIT_STUCK = 75
# A call still running this long after its own timeout is stuck: librdkafka honours its
# timeouts (a slow broker makes the call fail, and the batch is aborted and redone), so only the
# hang outlives it.
GRACE_S = 15.0
# send_offsets_to_transaction's own timeout: on a healthy broker it takes milliseconds; its
# hang (the broker gone during the call) then costs at most this plus GRACE_S.
SEND_OFFSETS_TIMEOUT_S = 10.0
# A guarded call still running this long after the service was told to stop is waiting on a
# Kafka that is away (on a healthy broker the calls take milliseconds): the process ends.
STOP_WAIT_S = 2.0


def _exit(code: int) -> None:
    logging.shutdown()  # flush the handlers: the reason must reach the log
    os._exit(code)


class Watchdog:
    """One monitor thread; ``with watchdog.deadline(what, timeout_s):`` arms it for a call.

    Given the service's stop event (:meth:`watch_stop`), it also ends the process (``on_stop(0)``)
    when a guarded call is still running ``stop_wait_s`` after the stop was asked for.
    """

    def __init__(
        self,
        service: str,
        grace_s: float = GRACE_S,
        tick_s: float = 1.0,
        on_stuck: Callable[[int], None] = _exit,
        stop_wait_s: float = STOP_WAIT_S,
        on_stop: Callable[[int], None] = _exit,
    ) -> None:
        self.service = service
        self.grace_s = grace_s
        self.tick_s = tick_s
        self.on_stuck = on_stuck
        self.stop_wait_s = stop_wait_s
        self.on_stop = on_stop
        self._stop: threading.Event | None = None
        self._stop_seen: float | None = None
        # (what, timeout, until, since)
        self._armed: tuple[str, float, float, float] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch_stop(self, stop: threading.Event) -> None:
        """Watch ``stop`` (the service's SIGTERM flag) from now on."""
        self._stop = stop
        self._start()

    @property
    def stopping(self) -> bool:
        """Whether the service was told to stop."""
        return self._stop is not None and self._stop.is_set()

    def stop_now(self, waiting_for: str) -> None:
        """End the process for a stop asked for while ``waiting_for`` Kafka."""
        log.warning(
            "%s: told to stop while %s waits for Kafka: ending now; the open transaction is "
            "aborted by the next instance, which resumes from the last commit",
            self.service,
            waiting_for,
        )
        self.on_stop(0)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name=f"{self.service}-watchdog", daemon=True
            )
            self._thread.start()

    @contextmanager
    def deadline(self, what: str, timeout_s: float) -> Iterator[None]:
        self._start()
        with self._lock:
            now = time.monotonic()
            self._armed = (what, timeout_s, now + timeout_s + self.grace_s, now)
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
            now = time.monotonic()
            if self.stopping:
                if self._stop_seen is None:
                    self._stop_seen = now
                if armed is not None and now - max(armed[3], self._stop_seen) >= self.stop_wait_s:
                    self.stop_now(armed[0])
                    return
            if armed is None or now < armed[2]:
                continue
            what, timeout_s, _until, _since = armed
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


class KafkaLoss:
    """Whether every broker went away since the last :meth:`clear`: the ``error_cb`` of the
    service's Kafka clients (it logs what it is given, as librdkafka would without one)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lost = threading.Event()
        self._log = ErrorLog(log, f"{service}: ")

    def on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._lost.set()
        self._log(err)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def clear(self) -> None:
        self._lost.clear()


# Seconds a consumer may hold no partition before the process ends to start again (at least).
UNASSIGNED_LIMIT_S = 60.0


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

    @classmethod
    def for_session(cls, session_timeout_ms: int) -> AssignmentGuard:
        """For a service that always holds partitions (one instance per gateway): four group
        sessions without any, and at least a minute, is past any rebalance."""
        return cls(max(UNASSIGNED_LIMIT_S, 4 * session_timeout_ms / 1000))

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

    def enforce(
        self, consumer: Consumer, service: str, what: str, on_stuck: Callable[[int], None]
    ) -> bool:
        """When due, :meth:`check` ``consumer``; past the limit, say why and end the process
        with ``on_stuck(EXIT_STUCK)`` (not ``close()``: a consumer in that state may not close
        either). Whether it did."""
        if not self.due():
            return False
        waited = self.check(bool(consumer.assignment()))
        if waited is None:
            return False
        log.error(
            "%s: the consumer has held no partition of %s for %.0fs (the edge Kafka away, or "
            "a group session lost and never rejoined, librdkafka#3437): exiting with %d to "
            "be started again",
            service,
            what,
            waited,
            EXIT_STUCK,
        )
        on_stuck(EXIT_STUCK)
        return True


T = TypeVar("T")

# Tries of a commit (then the batch is aborted) or an abort (then the service stops) that
# fails with a retriable error.
TXN_ATTEMPTS = 3


class Transactions:
    """The consume-transform-produce transaction the enricher and the scorer run per batch.

    :meth:`run` begins a transaction, calls ``work()`` (which produces the batch's records and
    returns its result and the input offsets to commit), sends the offsets and commits, every
    blocking call under the :class:`Watchdog`. A commit or abort that times out is asked for
    again. A failure the transaction can be aborted after (a produce or commit error
    librdkafka marks abortable or retriable, a full local queue) aborts it, calls ``rewind``
    (the service forgets what it changed since the last commit: feature states, dedup
    windows, open episodes) and seeks the consumer back to its committed offsets, so the same
    records are consumed again; ``run`` then returns None and the service goes on. A fatal
    failure (the producer fenced or broken, an abort that does not end) raises
    ``fatal(text)``: the process ends, and the next one resumes from the last commit.
    """

    def __init__(
        self,
        service: str,
        producer: Producer,
        consumer: Consumer,
        watchdog: Watchdog,
        rewind: Callable[[], None],
        fatal: Callable[[str], Exception],
        on_abort: Callable[[], None] = lambda: None,
        loss: KafkaLoss | None = None,
        back_every_s: float = 2.0,
    ) -> None:
        self.service = service
        # Set up with the clients: what they met before the first transaction is not a loss.
        self.loss = loss
        if loss is not None:
            loss.clear()
        self.back_every_s = back_every_s
        self.producer = producer
        self.consumer = consumer
        self.watchdog = watchdog
        self.rewind = rewind
        self.fatal = fatal
        self.on_abort = on_abort
        self.aborted = 0

    def run(self, work: Callable[[], tuple[T, list[TopicPartition]]]) -> T | None:
        """``work()`` in one transaction with its offsets; None when it was aborted."""
        self.producer.begin_transaction()
        try:
            result, offsets = work()
            self.commit(offsets)
        except (KafkaException, BufferError) as exc:
            self.recover(exc)
            return None
        return result

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Send ``offsets`` (none: a transaction of produced records only) and commit."""
        self._start_afresh_after_a_loss()
        if offsets:
            self.watchdog.call(
                "send_offsets_to_transaction",
                SEND_OFFSETS_TIMEOUT_S,
                self.producer.send_offsets_to_transaction,
                offsets,
                self.consumer.consumer_group_metadata(),
            )
        self._resumed("commit_transaction", 60, self.producer.commit_transaction)

    def _start_afresh_after_a_loss(self) -> None:
        """After every broker went away, wait for Kafka to be back, then end the process
        (``EXIT_STUCK``) instead of making a call that can hang on a stale coordinator."""
        if self.loss is None:
            return
        self.producer.poll(0)  # serves the error callback
        if not self.loss.lost:
            return
        waited, next_note = time.monotonic(), time.monotonic() + 30.0
        while True:
            if self.watchdog.stopping:
                self.watchdog.stop_now("the commit")
                raise self.fatal("told to stop while Kafka was away")
            try:
                self.producer.list_topics(timeout=self.back_every_s)
                break
            except KafkaException:
                if time.monotonic() >= next_note:
                    log.warning(
                        "%s: waiting for Kafka to be back (%.0f s)",
                        self.service,
                        time.monotonic() - waited,
                    )
                    next_note = time.monotonic() + 30.0
        log.warning(
            "%s: every Kafka broker went away during this run; now that Kafka is back, "
            "exiting with %d so that the service starts afresh (the Kafka client's "
            "transactional calls can hang on what it remembers of the old brokers); the open "
            "transaction is aborted by the next instance, which resumes from the last commit",
            self.service,
            EXIT_STUCK,
        )
        self.watchdog.on_stuck(EXIT_STUCK)
        raise self.fatal("every Kafka broker went away during this run: starting afresh")

    def recover(self, exc: Exception) -> None:
        """Abort the transaction and rewind state and positions to the last commit."""
        err = exc.args[0] if isinstance(exc, KafkaException) else None
        if err is not None and not abortable(err):
            raise self.fatal(f"transaction failed and cannot be aborted: {exc}") from exc
        log.warning("%s: aborting a batch (%s); rewinding to the last commit", self.service, exc)
        try:
            self._resumed("abort_transaction", 30, self.producer.abort_transaction)
        except KafkaException as failed:
            raise self.fatal(f"the transaction could not be aborted: {failed}") from failed
        self.aborted += 1
        self.on_abort()
        self.rewind()
        assigned = self.consumer.assignment()
        for tp in self.consumer.committed(assigned, timeout=30):
            offset = tp.offset if tp.offset >= 0 else 0
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _resumed(self, what: str, timeout_s: float, call: Callable[[float], None]) -> None:
        """A commit or an abort, asked for again while it fails with a retriable error (it
        timed out waiting for the batch's records: it goes on in the background). Before
        each try the producer serves its delivery reports, which an abort waits for."""
        for attempt in range(1, TXN_ATTEMPTS + 1):
            self.producer.poll(0)
            try:
                self.watchdog.call(what, timeout_s, call)
                return
            except KafkaException as exc:
                err = exc.args[0]
                retry = err.retriable() and not (err.fatal() or err.txn_requires_abort())
                if not retry or attempt == TXN_ATTEMPTS:
                    raise
                log.warning("%s: %s again (%s)", self.service, what, exc)


def abortable(err: KafkaError) -> bool:
    """Whether a transaction that failed with ``err`` can be aborted and the batch tried again.

    ``_STATE`` is what ``produce`` says once the broker's refusal of an earlier record of the
    same batch has reached the producer while the batch was still being written: the
    transaction may only be aborted now. (Were the producer fenced or broken, the abort fails
    and the service stops all the same.)
    """
    if err.fatal():
        return False
    return err.txn_requires_abort() or err.retriable() or err.code() == KafkaError._STATE


def offsets_after(ends: dict[tuple[str, int], int]) -> list[TopicPartition]:
    """The offsets to commit after the last record consumed of each partition."""
    return [TopicPartition(t, p, o + 1) for (t, p), o in ends.items()]
