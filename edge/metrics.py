"""Prometheus metrics every edge service exposes, and the HTTP server that serves them.

Each service process serves ``/metrics`` on ``[metrics] base_port + its offset`` (see
``edge/services.py``). The metric families below are shared so dashboards read the same names
for every service; a service labels them with its own ``service`` name. Names follow the
Prometheus conventions (``_total`` counters, base units, ``_seconds`` histograms) and pass
``promtool check metrics``.

Use the children once per stream rather than calling ``labels()`` per message:

>>> inc = MESSAGES_IN.labels(service="bridge", stream="telemetry").inc
>>> inc()

On a per-event hot path even that costs: a counter's ``inc()`` about 1 us and a histogram's
``observe()`` about 8 us, more than the bridge's whole check of an event. There, count in
plain Python and hand the totals over once per loop pass with :class:`CountBatch` and
:class:`HistogramBatch`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from shared.errors import ConfigError

# `_created` series double every family's size and no dashboard of ours reads them.
disable_created_metrics()

MESSAGES_IN = Counter(
    "fleetsentry_messages_in",
    "Messages a service received from its input, by stream.",
    ["service", "stream"],
)
MESSAGES_OUT = Counter(
    "fleetsentry_messages_out",
    "Messages a service wrote to its output and the broker confirmed, by stream.",
    ["service", "stream"],
)
DLQ_MESSAGES = Counter(
    "fleetsentry_dlq_messages",
    "Rejected messages written to the dead-letter topic, by reason.",
    ["service", "reason"],
)
# Per vehicle (its keyed token, as in anon.*), so an operator sees who floods; the bridge
# names at most RATE_LIMITED_VINS vehicles per process (the first it limits) and counts the
# rest as vehicle="other", so the series stay bounded whatever vehicles misbehave.
RATE_LIMITED = Counter(
    "fleetsentry_rate_limited",
    "Messages refused because their vehicle sent over its rate limit, by vehicle token.",
    ["service", "vehicle"],
)
RATE_LIMITED_VINS = 100
PRODUCE_ERRORS = Counter(
    "fleetsentry_produce_errors",
    "Kafka produce attempts that failed (delivery report with an error or a full queue).",
    ["service", "topic"],
)
# The bridge's outage spool (edge/bridge/spool.py): what it holds, what went through it, and
# what it could not hold. Dropped messages were acknowledged to their vehicles and are gone:
# the one place the gateway loses acknowledged data, and it says how much.
SPOOL_BYTES = Gauge(
    "fleetsentry_spool_bytes",
    "Bytes in the bridge's outage spool (records waiting for Kafka, and confirmed ones "
    "not yet deleted).",
    ["service"],
)
CHAMPION_MISSING = Gauge(
    "fleetsentry_agent_champion_missing",
    "1 while cloud.models holds no champion for the stream (withdrawn by a tombstone, or "
    "deleted by the topic's size retention): a gateway installed now would find none.",
    ["stream"],
)
SPOOLING = Gauge(
    "fleetsentry_spooling",
    "1 while the bridge writes to its outage spool instead of Kafka.",
    ["service"],
)
SPOOLED = Counter(
    "fleetsentry_spooled_records",
    "Records written to the bridge's outage spool.",
    ["service"],
)
SPOOL_DRAINED = Counter(
    "fleetsentry_spool_drained_records",
    "Spooled records Kafka confirmed after an outage.",
    ["service"],
)
SPOOL_DROPPED = Counter(
    "fleetsentry_spool_dropped",
    "Acknowledged messages dropped because the outage spool was full, by stream.",
    ["service", "stream"],
)
# A service that cannot write to the gateway's disk (full, read-only, failing) counts and
# retries rather than crash-looping; the count is what the alert rules watch.
WRITE_ERRORS = Counter(
    "fleetsentry_write_errors",
    "Writes to the gateway's disk that failed, by service and errno (ENOSPC: disk full).",
    ["service", "errno"],
)
# Topics are bounded by bytes as well as time (edge/disk.py): a consumer further behind than
# a partition keeps loses what retention deleted first. Never silently: counted here.
RECORDS_EXPIRED_UNREAD = Counter(
    "fleetsentry_records_expired_unread",
    "Records retention deleted before the service read them (it fell too far behind).",
    ["service", "topic"],
)
CONSUMER_LAG = Gauge(
    "fleetsentry_consumer_lag_messages",
    "Messages between a consumer's position and the partition's end offset.",
    ["service", "topic", "partition"],
)
# Device time to broker-confirmed output: spans vehicle clocks, MQTT queueing and Kafka.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
END_TO_END_LATENCY = Histogram(
    "fleetsentry_end_to_end_latency_seconds",
    "Seconds from the event's device timestamp until its output was confirmed by Kafka.",
    ["service", "stream"],
    buckets=LATENCY_BUCKETS,
)


class CountBatch:
    """``n += k`` on the hot path; ``flush()`` adds the total to the counter child."""

    __slots__ = ("_inc", "n")

    def __init__(self, child: Any) -> None:
        self._inc = child.inc
        self.n = 0

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self._inc(n)


class HistogramBatch:
    """``values.append(x)`` on the hot path; ``flush()`` observes them all at once.

    The same buckets and sum as one ``observe()`` per value (a value goes to the first bucket
    whose bound is >= it; NaN, which ``observe`` counts in no bucket, is left out), computed
    with numpy and added to the child's bucket and sum values. Those are prometheus_client
    internals: without them (a release that moved them) it falls back to ``observe()``.
    """

    __slots__ = ("_child", "_bounds", "values")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.values: list[float] = []
        bounds = getattr(child, "_upper_bounds", None)
        fast = bounds is not None and hasattr(child, "_buckets") and hasattr(child, "_sum")
        self._bounds = np.asarray(bounds, dtype=np.float64) if fast else None

    def flush(self) -> None:
        values = self.values
        if not values:
            return
        self.values = []
        if self._bounds is None:
            for v in values:
                self._child.observe(v)
            return
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if not arr.size:
            return
        counts = np.bincount(
            np.searchsorted(self._bounds, arr, side="left"), minlength=len(self._bounds)
        )
        buckets = self._child._buckets
        for i in np.flatnonzero(counts):
            buckets[i].inc(int(counts[i]))
        self._child._sum.inc(float(arr.sum()))


def serve(host: str, port: int | None) -> Any:
    """Serve the default registry on ``host:port`` (``None`` or 0: metrics off).

    Returns the server (``shutdown()`` stops it) or None. Runs in a daemon thread.
    """
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror}; pick free "
            "ports (each service uses base_port + offset + 10 per extra process)",
            setting="metrics.base_port",
        ) from None
    return server


def update_consumer_lag(
    service: str, consumer: Any, partitions: Iterable[Any] | None = None
) -> int:
    """Set CONSUMER_LAG for each assigned partition of a confluent-kafka ``consumer``.

    Uses the cached watermarks (no broker round trip); needs ``statistics.interval.ms`` or a
    recent fetch to be current. Returns the total lag.
    """
    total = 0
    parts = list(partitions) if partitions is not None else consumer.assignment()
    positions = consumer.position(parts) if parts else []
    for tp in positions:
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high is None or high < 0:
            continue
        lag = max(0, high - tp.offset) if tp.offset >= 0 else high
        CONSUMER_LAG.labels(service=service, topic=tp.topic, partition=str(tp.partition)).set(lag)
        total += lag
    return total
