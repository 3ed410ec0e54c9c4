"""raw.* -> vault + anon.*, exactly once.

One Kafka transaction per consumed batch holds: the anon records, the changed per-key feature
states, tombstones of the states that expired (not written for ``state_ttl_s``) and the batch's
dedup delta (changelog), and the consumed offsets. Whatever kills the
process, the batch is either entirely visible to read_committed readers or not at all, and a
restart resumes from the committed offsets with the state those offsets imply. The vault is
written before the commit; storing a value is idempotent, so a replayed batch changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Histogram

from edge import metrics
from edge.config import EdgeConfig
from edge.dlq import DeadLetters
from edge.enricher import changelog
from edge.enricher.dedup import DedupWindow, event_key
from edge.enricher.errors import EnricherError
from edge.enricher.expiry import KeyClock
from edge.enricher.gaps import OffsetGaps
from edge.transactions import (
    AssignmentGuard,
    KafkaLoss,
    Transactions,
    Watchdog,
    offsets_after,
)
from edge.vault import Vault
from shared import streams
from shared.contracts import decode
from shared.errors import ContractError
from shared.features import FeatureState, encode_state
from shared.features.anonymize import vault_of
from shared.features.batch import BatchResult, anonymize_batch
from shared.kafka_config import client_config
from shared.kafka_read import FETCH_WAIT_MAX_MS, usable
from shared.kafka_write import produce
from shared.streams import StreamSpec
from shared.tokens import Tokenizer
from shared.topics import DLQ_INGEST, ENRICHER_STATE

log = logging.getLogger("enricher")
TRANSACTION_SECONDS = Histogram(
    "fleetsentry_enricher_commit_seconds",
    "Seconds to commit one batch's transaction (records, changelog and offsets).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SERVICE = "enricher"
# Observe end-to-end latency for every n-th record: the histogram stays representative and
# its cost stays off the per-record path.
LATENCY_SAMPLE = 32
DRAIN_EVERY = 500
# Expired states leave in the batches that follow, at most this many per event a batch may
# hold: more than a batch can add (an event writes two states at most), so a flood's states
# leave as fast as it made them.
EXPIRE_PER_EVENT = 3
# Vault retention runs between batches: this often, deleting at most VAULT_EXPIRE_LIMIT values.
VAULT_EXPIRE_EVERY_S = 1.0
VAULT_EXPIRE_LIMIT = 2000


def batch_pii(items: list[tuple[StreamSpec, Any]]) -> list[tuple[str, str, str | None]]:
    """Every identifying value of a batch, once each (the same vehicle recurs all batch):
    what each stream's declaration tokenizes or keeps in the vault (``vault_of``)."""
    seen: set[tuple[str, Any]] = set()
    pii: dict[tuple[str, str], str | None] = {}
    for spec, event in items:
        vault = vault_of(spec)
        alike = (spec.name, vault.key(event))
        if alike in seen:
            continue
        seen.add(alike)
        for kind, value, person in vault(event):
            pii.setdefault((kind, value), person)
    return [(kind, value, person) for (kind, value), person in pii.items()]


class Enricher:
    """Consume raw.*, anonymize, write anon.* transactionally. ``start()`` connects."""

    def __init__(
        self,
        config: EdgeConfig,
        vault: Vault,
        tokenizer: Tokenizer,
        instance: int = 0,
        clock: Callable[[], float] = time.time,
        only: Sequence[StreamSpec] | None = None,
    ) -> None:
        """``only``: the streams this enricher reads (default every registered stream)."""
        self.config = config
        self.settings = config.enricher
        self.vault = vault
        self.tokenizer = tokenizer
        self.transactional_id = f"{config.edge_id}-enricher-{instance}"
        self._clock = clock
        chosen = streams.all_streams() if only is None else only
        if not chosen:
            raise EnricherError("no stream to enrich")
        self._specs = {spec.raw_topic: spec for spec in chosen}
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._watchdog = Watchdog(SERVICE)
        self._loss = KafkaLoss(SERVICE)
        self._unassigned = self._assignment_guard()
        self._letters: DeadLetters | None = None
        self.state = FeatureState()
        self.clock = KeyClock(self.settings.state_ttl_s, self.settings.max_states)
        self._windows: dict[tuple[str, int], DedupWindow] = {}
        self._updates: dict[str, Any] = {}  # the batch's changed states, until written
        self._next_vault_expiry = 0.0
        self.consumed = self.produced = self.duplicates = self.rejected = 0
        self.skipped = 0  # raw records retention deleted before they were read
        self._gaps = OffsetGaps()
        self.expired_states = self.expired_values = 0
        self.batches = 0
        # Wall time spent computing batches vs committing them (the bench reports the split).
        self.process_s = self.commit_s = 0.0
        names = [s.name for s in self._specs.values()]
        self._in = {n: metrics.MESSAGES_IN.labels(service=SERVICE, stream=n) for n in names}
        self._out = {n: metrics.MESSAGES_OUT.labels(service=SERVICE, stream=n) for n in names}
        self._latency = {
            n: metrics.END_TO_END_LATENCY.labels(service=SERVICE, stream=n) for n in names
        }

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        kafka = self.config.kafka
        bootstrap = kafka.bootstrap
        self._letters = DeadLetters.load(self.config)
        self._producer = self._transactional_producer()
        try:
            # Fences a previous instance and aborts whatever transaction it left open, so the
            # changelog's committed end is final before we read it.
            self._watchdog.call("init_transactions", 60, self._producer.init_transactions)
        except KafkaException as exc:
            raise EnricherError(f"cannot start transactions on {bootstrap}: {exc}") from None
        self._restore()
        log.info(
            "restored %d feature states and %d dedup windows", len(self.state), len(self._windows)
        )
        self._consumer = Consumer(
            client_config(
                kafka,
                {
                    "group.id": s.group,
                    "client.id": self.transactional_id,
                    "error_cb": self._loss.on_error,
                    "enable.auto.commit": False,
                    # Static membership: a restarted instance takes its partitions back at once
                    # instead of waiting for the dead one's session to expire.
                    "group.instance.id": self.transactional_id,
                    "session.timeout.ms": s.session_timeout_ms,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
                    # Prefetch about two batches, not librdkafka's 64 MB: a gateway is short of memory.
                    "queued.max.messages.kbytes": 8192,
                },
            )
        )
        self._consumer.subscribe(list(self._specs), on_assign=lambda _c, _parts: self._gaps.reset())
        self._unassigned = self._assignment_guard()  # from now: joining takes a few seconds
        self._txn = Transactions(
            SERVICE,
            self._producer,
            self._consumer,
            self._watchdog,
            rewind=self._rewind,
            fatal=EnricherError,
            on_abort=metrics.PRODUCE_ERRORS.labels(service=SERVICE, topic="transaction").inc,
            loss=self._loss,
        )

    def _transactional_producer(self) -> Producer:
        s = self.settings
        return Producer(
            client_config(
                self.config.kafka,
                {
                    "transactional.id": self.transactional_id,
                    "transaction.timeout.ms": s.transaction_timeout_ms,
                    "error_cb": self._loss.on_error,
                    "linger.ms": s.linger_ms,
                    "compression.type": s.compression,
                    "queue.buffering.max.messages": 200_000,
                    "queue.buffering.max.kbytes": 32_768,
                    "batch.num.messages": 10_000,
                },
            )
        )

    def _assignment_guard(self) -> AssignmentGuard:
        # One enricher per gateway: it always holds every partition of raw.*. Four sessions
        # without any (a minute by default) is past any rebalance.
        return AssignmentGuard.for_session(self.settings.session_timeout_ms)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            # What it holds after the last commit belongs to no committed transaction; with
            # Kafka away, waiting for it would only outlast the supervisor's grace.
            self._producer.flush(0 if self._loss.lost else 10)
            self._producer = None

    def run(self, stop: Any, max_batches: int | None = None) -> None:
        """Process batches until ``stop`` (a threading.Event) is set."""
        self._watchdog.watch_stop(stop)
        n = 0
        last_lag = 0.0
        while not stop.is_set() and (max_batches is None or n < max_batches):
            self.step()
            n += 1
            assert self._consumer is not None
            if self._unassigned.enforce(self._consumer, SERVICE, "raw.*", self._watchdog.on_stuck):
                return
            if time.monotonic() - last_lag > 5:
                last_lag = time.monotonic()
                assert self._consumer is not None
                metrics.update_consumer_lag(SERVICE, self._consumer)

    def _restore(self) -> None:
        restored = changelog.restore(self.config.kafka, self.settings.dedup_window)
        self.state, self._windows = restored.state, restored.windows
        self.clock.load(restored.written)

    # --- one batch ---------------------------------------------------------------------

    def step(self) -> int:
        """Consume one batch and commit it in one transaction; returns records consumed."""
        assert self._consumer is not None and self._producer is not None
        msgs = self._consumer.consume(
            num_messages=self.settings.batch_size, timeout=self.settings.batch_wait_ms / 1000
        )
        msgs = [m for m in msgs if usable(m, EnricherError, "consuming raw")]
        self._expire_vault()
        if not msgs:
            if self.clock.due(self._clock()):
                self._expire_idle()
            return 0
        consumed = len(msgs)
        t0 = time.perf_counter()

        def work() -> tuple[tuple[int, float], list[TopicPartition]]:
            items, ends = self._admit(msgs)
            msgs.clear()  # a gateway is short of memory: the raw bytes are not needed any more
            produced = self._process(items)
            return (produced, time.perf_counter()), offsets_after(ends)

        done = self._txn.run(work)
        if done is None:
            return 0
        produced, t1 = done
        t2 = time.perf_counter()
        self.process_s += t1 - t0
        self.commit_s += t2 - t1
        TRANSACTION_SECONDS.observe(t2 - t1)
        self.consumed += consumed
        self.produced += produced
        self.batches += 1
        return consumed

    def _process(self, every: list[tuple[StreamSpec, Any]]) -> int:
        assert self._producer is not None
        # The whole batch at once (vectorised): the very records and states that anonymizing
        # event by event would give.
        self._updates = {}
        if every:
            self._emit(every, anonymize_batch(every, self.state, self.tokenizer))
        now = self._clock()
        for spec, event in every[::LATENCY_SAMPLE]:
            self._latency[spec.name].observe(max(0.0, now - spec.event_time(event)))
        for name, n in Counter(spec.name for spec, _ in every).items():
            self._out[name].inc(n)
        self.vault.put_many(batch_pii(every))
        self._write_states(now)
        return len(every)

    def _emit(self, items: list[tuple[StreamSpec, Any]], result: BatchResult) -> None:
        """Produce a batch's records and take its states."""
        assert self._producer is not None
        self.state.apply(result.updates)
        self._updates.update(result.updates)
        poll = self._producer.poll
        wire = iter(result.wire)
        for start in range(0, len(items), DRAIN_EVERY):
            chunk = items[start : start + DRAIN_EVERY]
            # chunk first: zip stops at its end without drawing one record too many.
            for (spec, _event), (key, data) in zip(chunk, wire, strict=False):
                produce(self._producer, spec.anon_topic, data, key.encode())
            # Serve delivery reports as we go: until then every sent record stays queued.
            poll(0)

    def _write_states(self, now: float) -> None:
        """The batch's changed states, expired states' tombstones and dedup windows."""
        assert self._producer is not None
        updates, self._updates = self._updates, {}
        for key in updates:
            self._send(ENRICHER_STATE, key.encode(), encode_state(updates[key]))
        self.clock.touch(updates, now)
        self._expire_states(now, EXPIRE_PER_EVENT * self.settings.batch_size)
        for (topic, partition), window in self._windows.items():
            seq, ids, expired = window.seal()
            if seq is not None:
                self._send(
                    ENRICHER_STATE,
                    changelog.dedup_key(topic, partition, seq),
                    changelog.encode_ids(ids),
                )
            for old in expired:
                self._send(ENRICHER_STATE, changelog.dedup_key(topic, partition, old), None)

    def _expire_states(self, now: float, limit: int) -> None:
        """Forget states not written for state_ttl_s: tombstones in this transaction."""
        expired = self.clock.expire(now, limit)
        if not expired:
            return
        self.state.drop(expired)
        for key in expired:
            self._send(ENRICHER_STATE, key.encode(), None)
        self.expired_states += len(expired)

    def _expire_idle(self) -> None:
        """Nothing arrived but states are due: tombstone them in a transaction of their own."""

        def work() -> tuple[None, list[TopicPartition]]:
            self._expire_states(self._clock(), EXPIRE_PER_EVENT * self.settings.batch_size)
            return None, []

        self._txn.run(work)

    def _expire_vault(self) -> None:
        """The vault's retention limit, kept by the running service with bounded work."""
        now = time.monotonic()
        if now < self._next_vault_expiry:
            return
        self._next_vault_expiry = now + VAULT_EXPIRE_EVERY_S
        n = self.vault.expire(self.config.vault.retention_days, VAULT_EXPIRE_LIMIT)
        if n:
            self.expired_values += n
            log.info(
                "retention: deleted %d vault values not seen for %g days",
                n,
                self.config.vault.retention_days,
            )

    def _admit(
        self, msgs: list[Message]
    ) -> tuple[list[tuple[StreamSpec, Any]], dict[tuple[str, int], int]]:
        """Decode each message and drop the bridge's redeliveries; bad ones go to the DLQ.

        Returns the events to anonymize and each partition's last consumed offset.
        """
        items: list[tuple[StreamSpec, Any]] = []
        ends: dict[tuple[str, int], int] = {}
        counts_in: Counter[str] = Counter()
        specs, windows = self._specs, self._windows
        for msg in msgs:
            tp: tuple[str, int] = (msg.topic(), msg.partition())  # type: ignore[assignment]
            # A partition's messages come in offset order: its last one is its end.
            ends[tp] = msg.offset()  # type: ignore[assignment]
            self._count_skipped(tp, ends[tp])
            spec = specs[tp[0]]
            counts_in[spec.name] += 1
            try:
                event: Any = decode(spec.event, msg.value() or b"")
            except ContractError as exc:
                self._reject(msg, exc)
                continue
            window = windows.get(tp)
            if window is None:
                window = self._window(*tp)
            device = getattr(event, spec.device_field)
            if not window.check_and_add(event_key(device, event.event_id)):
                self.duplicates += 1
                continue
            items.append((spec, event))
        for name, n in counts_in.items():
            self._in[name].inc(n)
        return items, ends

    def _count_skipped(self, tp: tuple[str, int], offset: int) -> None:
        """Count records retention deleted before they were read (see edge/enricher/gaps.py)."""
        if tp not in self._gaps:
            assert self._consumer is not None
            committed = self._consumer.committed([TopicPartition(*tp)], timeout=10)[0].offset
            if committed >= 0:
                self._gaps.expect(tp, committed)
        skipped = self._gaps.observe(tp, offset)
        if skipped:
            self.skipped += skipped
            metrics.RECORDS_EXPIRED_UNREAD.labels(service=SERVICE, topic=tp[0]).inc(skipped)
            log.error(
                "%s[%d]: %d records were deleted by retention before they were read "
                "(offsets %d-%d); the enricher fell further behind than the disk plan "
                "keeps raw.*",
                tp[0],
                tp[1],
                skipped,
                offset - skipped,
                offset - 1,
            )

    def _send(self, topic: str, key: bytes, value: bytes | None) -> None:
        assert self._producer is not None
        produce(self._producer, topic, value, key)

    def _window(self, topic: str, partition: int) -> DedupWindow:
        window = self._windows.get((topic, partition))
        if window is None:
            window = self._windows[(topic, partition)] = DedupWindow(self.settings.dedup_window)
        return window

    def _reject(self, msg: Message, exc: ContractError) -> None:
        # The bridge validated this already; a record that still fails is kept, not dropped.
        self.rejected += 1
        metrics.DLQ_MESSAGES.labels(service=SERVICE, reason="contract").inc()
        assert self._letters is not None  # a raw.* record is personal: its letter is sealed
        letter = self._letters.letter(
            f"{msg.topic()}/{msg.partition()}@{msg.offset()}",
            "contract",
            str(exc)[:500],
            self._clock(),
            msg.value() or b"",
        )
        self._send(DLQ_INGEST, b"enricher", letter)

    def _rewind(self) -> None:
        """After an aborted batch: states, dedup windows and gaps as of the last commit."""
        self._restore()
        self._gaps.reset()
