"""``fleetsentry cloud store``: the consumer loop around :mod:`cloud.store.writer`."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cloud.store import layout
from cloud.store.errors import StoreError
from cloud.store.writer import Batch, ParquetFiles, flush, to_rows
from shared.kafka_config import Target, client_config

log = logging.getLogger(__name__)


class Store:
    """Consumes every gateway's replicated topics into Parquet. No I/O until ``start``."""

    def __init__(
        self,
        bootstrap: Target,
        root: Path,
        group_id: str = "fleetsentry-store",
        batch_records: int = 5000,
        flush_interval_s: float = 5.0,
        compression: str = "zstd",
    ) -> None:
        self.bootstrap = bootstrap
        self.files = ParquetFiles(root, compression)
        self.group_id = group_id
        self.batch_records = batch_records
        self.flush_interval_s = flush_interval_s
        self.stop_event = threading.Event()
        self.rows_written = 0
        self._consumer: Consumer | None = None
        self._batch = Batch()
        self._positions: dict[tuple[str, int], int] = {}

    def start(self) -> None:
        self.files.open()
        self._consumer = Consumer(
            client_config(
                self.bootstrap,
                {
                    "group.id": self.group_id,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    # A new gateway's topics appear while we run: notice them within seconds.
                    "topic.metadata.refresh.interval.ms": 5000,
                },
            )
        )
        self._consumer.subscribe(layout.SUBSCRIPTION, on_revoke=self._on_revoke)

    def close(self) -> None:
        if self._consumer is not None:
            self._flush()
            self._consumer.close()
            self._consumer = None
        self.files.close()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Whatever we hold of a partition must be durable before another owner reads it.
        self._flush()

    def _commit(self) -> None:
        assert self._consumer is not None
        if not self._positions:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Files are durable and indexed: a replay after this would be deduplicated.
            log.warning("offset commit failed (records will be re-read and skipped): %s", exc)
        self._positions.clear()

    def _flush(self) -> None:
        if self._batch.count == 0 and not self._positions:
            return
        try:
            self.rows_written += flush(self._batch, self.files, self._commit)
        except OSError as exc:
            raise StoreError(f"writing Parquet under {self.files.root} failed: {exc}") from None
        self._batch = Batch()

    def poll_once(self, timeout: float = 1.0) -> int:
        """Read one batch of messages (up to ``batch_records``); returns how many."""
        assert self._consumer is not None, "call start() first"
        msgs = self._consumer.consume(num_messages=self.batch_records, timeout=timeout)
        good = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    log.warning("consumer error: %s", err)
                continue
            topic, part, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or part is None or offset is None:
                continue
            good.append(msg)
            self._positions[(topic, part)] = offset + 1
        if good:
            to_rows(self._batch, self.files, good)
        return len(good)

    def run(self, until_idle_s: float | None = None, progress: Any = None) -> int:
        """Consume until stopped (or ``until_idle_s`` without a message); returns rows written."""
        last_flush = last_msg = time.monotonic()
        while not self.stop_event.is_set():
            n = self.poll_once(timeout=0.5)
            now = time.monotonic()
            if n:
                last_msg = now
            if self._batch.count >= self.batch_records or now - last_flush >= self.flush_interval_s:
                self._flush()
                last_flush = now
                if progress is not None:
                    progress(self.rows_written)
            if until_idle_s is not None and now - last_msg >= until_idle_s:
                break
        self._flush()
        return self.rows_written
