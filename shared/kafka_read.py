"""Read a topic to its end: every way the package reads what a topic holds as a read starts.

- ``read_to_end``: from the beginning, committed records only, every record handed to a
  callback: how a service restores its state from a compacted topic (the enricher's
  changelog, the scorer's episodes) or looks at what one holds (the model agent's champions).
- ``records``: the same read as an iterator, with the choices the callers need: only the last
  records of each partition, a deadline that ends the read quietly (what was read so far),
  a missing topic read as empty.
- ``watermarks``: each partition's (low, high) offsets, for counting and for reading or
  following from the end.
- ``usable``: whether a consumed message is a record, for the services' consume loops, and
  ``FETCH_WAIT_MAX_MS``, their consumers' long poll.

The end is each partition's high watermark as the read starts: records written meanwhile
are not handed over. Positions, not the offsets of records seen, tell when a partition is
done: transaction markers take offsets that no record has. With ``stable_end`` a partition
is also done at librdkafka's partition EOF (its last stable offset, with ``read_committed``):
the read does not wait for transactions still open below the high watermark.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from shared.kafka_config import Target, bootstrap_of, client_config

log = logging.getLogger(__name__)

# How long the broker may hold a fetch that finds nothing new (librdkafka's
# fetch.wait.max.ms). The broker answers as soon as a record is there to read (fetch.min.bytes
# 1; with read_committed, once its transaction commits), so this adds no latency; it sets how
# often an idle consumer asks. The scorer's 5 ms had an idle gateway's Kafka answering 250
# fetches a second, 12 % of a core (bench/idle.py).
FETCH_WAIT_MAX_MS = 500


def usable(msg: Message, fail: Callable[[str], Exception], what: str) -> bool:
    """Whether ``msg``, from a consumer's ``poll`` or ``consume``, is a record to process.

    Not a record: librdkafka's partition-EOF event, and an error the client recovers from
    by itself (a broker away, a topic not yet created), which is logged under ``what``. A
    fatal error raises ``fail(reason)``: the consumer is unusable, the service stops and its
    supervisor starts it again. (A consumer's own fatal error, such as a static member
    fenced by another with its ``group.instance.id``, comes with the ``_FATAL`` code and
    without the fatal flag: it consumes nothing more, ever.)
    """
    err = msg.error()
    if err is None:
        return True
    if err.code() != KafkaError._PARTITION_EOF:
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise fail(f"{what}: the Kafka consumer failed: {err}")
        log.warning("%s: %s", what, err)
    return False


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int], timeout: float
) -> dict[int, tuple[int, int]]:
    """``partition -> (low, high)`` offsets of ``topic``, asked of the brokers."""
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        for p in partitions
    }


def read_to_end(
    target: Target,
    topic: str,
    handle: Callable[[Message], None],
    *,
    error: Callable[[str], Exception],
    timeout_s: float = 60.0,
    missing_hint: str = "",
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Hand every committed record of ``topic`` to ``handle``, oldest first per partition,
    until every partition's end; returns how many were handed over.

    Failures raise ``error(message)``: the cluster not answering, the topic missing (with
    ``missing_hint``), a consumer error, or the end not reached within ``timeout_s``.
    """
    n = 0
    for msg in records(
        target,
        topic,
        error=error,
        timeout_s=timeout_s,
        stable_end=True,
        raise_errors=True,
        missing_hint=missing_hint,
        extra=extra,
    ):
        handle(msg)
        n += 1
    return n


def records(
    target: Target,
    topic: str,
    *,
    error: Callable[[str], Exception],
    timeout_s: float = 60.0,
    last: int | None = None,
    last_of_all: bool = False,
    partial: bool = False,
    missing_ok: bool = False,
    stable_end: bool = False,
    raise_errors: bool = False,
    missing_hint: str = "",
    unreachable_hint: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Iterator[Message]:
    """The committed records of ``topic`` up to each partition's end as the read starts,
    oldest first per partition (partitions interleaved).

    ``last``: only each partition's last ``last`` offsets (``last_of_all``: the topic's last
    ``last``, split evenly across its partitions). ``partial``: the deadline
    (``timeout_s``) ends the read quietly instead of raising. ``missing_ok``: a missing topic
    reads as empty. ``raise_errors``: a consumer error raises instead of being skipped.
    Failures raise ``error(message)``: the cluster not answering (with ``unreachable_hint``),
    the topic missing (with ``missing_hint``), the deadline passed, a consumer error.
    """
    config = {
        "group.id": f"fleetsentry-read-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": stable_end,
        "auto.offset.reset": "earliest",
        **(extra or {}),
    }
    consumer = Consumer(client_config(target, config))
    where = bootstrap_of(target)
    try:
        ends = _start(consumer, topic, min(15.0, timeout_s), last, last_of_all, missing_ok)
    except _Missing:
        consumer.close()
        raise error(f"topic {topic} does not exist on {where}{_hint(missing_hint)}") from None
    except KafkaException as exc:  # the cluster did not answer
        consumer.close()
        raise error(f"cannot read {topic} from {where}: {exc}{_hint(unreachable_hint)}") from None
    try:
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                if partial:
                    return
                raise error(f"could not read {topic} to its end within {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if _keep(msg, ends, raise_errors, error, topic):
                    yield msg
            _drop_done(consumer, topic, ends)
    finally:
        consumer.close()


class _Missing(Exception):
    pass


def _hint(hint: str) -> str:
    return f": {hint}" if hint else ""


def _start(
    consumer: Consumer,
    topic: str,
    timeout: float,
    last: int | None,
    last_of_all: bool,
    missing_ok: bool,
) -> dict[int, int]:
    """Assign every partition with records to read; returns ``partition -> end``."""
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        if missing_ok:
            return {}
        raise _Missing
    if last is not None and last_of_all:
        last = max(1, -(-last // max(1, len(meta.partitions))))
    ends: dict[int, int] = {}
    starts = []
    for p, (low, high) in watermarks(consumer, topic, meta.partitions, timeout).items():
        if high > low:
            ends[p] = high
            starts.append(TopicPartition(topic, p, low if last is None else max(low, high - last)))
    if starts:
        consumer.assign(starts)
    return ends


def _keep(
    msg: Message,
    ends: dict[int, int],
    raise_errors: bool,
    error: Callable[[str], Exception],
    topic: str,
) -> bool:
    """Is ``msg`` a record before its partition's end? A partition EOF ends the partition."""
    err = msg.error()
    if err is not None:
        if err.code() == KafkaError._PARTITION_EOF:
            ends.pop(msg.partition() or 0, None)
        elif raise_errors:
            raise error(f"reading {topic}: {err}")
        return False
    p, off = msg.partition(), msg.offset()
    return p is not None and off is not None and off < ends.get(p, 0)


def _drop_done(consumer: Consumer, topic: str, ends: dict[int, int]) -> None:
    """Forget the partitions whose position reached their end."""
    if not ends:
        return
    for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
        if tp.offset >= ends[tp.partition]:
            del ends[tp.partition]
