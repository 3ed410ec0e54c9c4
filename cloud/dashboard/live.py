"""Live figures from the cloud's replicated topics, kept in memory for the last hour or so.

MirrorMaker 2 names every gateway's copies ``<edge_id>.<topic>``: ``edge-1.scores.payments``,
``edge-1.alerts``, ``edge-1.model-status`` and ``edge-1.heartbeats`` (its own heartbeats,
emitted every second on the gateway and replicated back: the age of the newest one is the
gateway's replication lag). :class:`LiveState` folds those records into per-gateway and
per-stream figures (pure, no I/O; tests feed it directly); :class:`KafkaWatcher` feeds it
from the cloud Kafka in a background thread.

Rates are bucketed by event time (the device's clock), so a gateway's backlog arriving after
an outage fills in the minutes it belongs to instead of a spike at arrival. Charts run on that
clock too: their "now" is the newest event's time (never later than the cloud's clock), and
the bucket holding it is still filling, so its rate is taken over the part that has passed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from shared import streams, topics
from shared.contracts import Alert, Label, ModelStatus, Score, decode
from shared.errors import ContractError
from shared.kafka_config import Target, client_config

log = logging.getLogger("dashboard.live")

TOPIC = re.compile(
    r"^(?P<edge>[A-Za-z0-9_-]+)\.(?P<kind>heartbeats|model-status|alerts|"
    r"scores\.(?P<stream>[a-z0-9_]+))$"
)
SUBSCRIPTION = r"^[A-Za-z0-9_-]+\.(heartbeats|model-status|alerts|scores\.[a-z0-9_]+)$"
UNCONFIRMED = "unconfirmed"
_MAX_LABELS = 500_000
_MAX_ALERTS = 5_000
_MAX_SCORES = 5_000
_MAX_STATUS = 500
# The bucket still filling is drawn once this share of it has passed: over less, a single
# event reads as a burst (one event in 0.1 s is 10/s).
PARTIAL_MIN_SHARE = 0.5


class Series:
    """Counters per time bucket and key, for the last ``keep`` buckets."""

    def __init__(self, bucket_s: float, keep: int) -> None:
        self.bucket_s = bucket_s
        self.keep = keep
        self.newest: float | None = None  # the latest timestamp added (event time)
        self._buckets: dict[int, Counter[str]] = {}

    def add(self, ts: float, key: str, n: int = 1) -> None:
        b = int(ts // self.bucket_s)
        self._buckets.setdefault(b, Counter())[key] += n
        if self.newest is None or ts > self.newest:
            self.newest = ts
        if len(self._buckets) > self.keep + self.keep // 4:
            for old in sorted(self._buckets)[: len(self._buckets) - self.keep]:
                del self._buckets[old]

    def total(self, key: str, start: float, end: float) -> int:
        lo, hi = int(start // self.bucket_s), int(end // self.bucket_s)
        return sum(c[key] for b, c in self._buckets.items() if lo <= b <= hi)

    def clock(self, now: float) -> float:
        """The event-time now: the newest timestamp added, but never later than ``now``
        (the cloud's clock), so a device clock running ahead does not drag charts forward."""
        return now if self.newest is None else min(self.newest, now)

    def first(self, start: float, end: float) -> float | None:
        """Start time of the first bucket holding data in [start, end]; None if none does."""
        lo, hi = int(start // self.bucket_s), int(end // self.bucket_s)
        held = [b for b, c in self._buckets.items() if lo <= b <= hi and any(c.values())]
        return min(held) * self.bucket_s if held else None

    def window(
        self, start: float, end: float, keys: list[str], now: float | None = None
    ) -> dict[str, Any]:
        """Bucket start times and one list of per-second rates per key, over [start, end].

        ``now`` (event time) marks the bucket still filling: its rate is taken over the part
        that has passed, and is None (a gap, never a false zero) until ``PARTIAL_MIN_SHARE``
        of it has. Every other bucket is whole, and an empty one reads 0.
        """
        lo, hi = int(start // self.bucket_s), int(end // self.bucket_s)
        buckets = range(lo, hi + 1)
        spans = [self._span(b, now) for b in buckets]
        empty: Counter[str] = Counter()
        rates = {
            k: [
                None if span is None else round(self._buckets.get(b, empty)[k] / span, 4)
                for b, span in zip(buckets, spans, strict=True)
            ]
            for k in keys
        }
        return {"t": [b * self.bucket_s for b in buckets], "rates": rates}

    def _span(self, bucket: int, now: float | None) -> float | None:
        """Seconds of ``bucket`` that have passed by ``now``; None while too few to tell."""
        if now is None or now >= (bucket + 1) * self.bucket_s:
            return self.bucket_s
        passed = now - bucket * self.bucket_s
        return passed if passed >= PARTIAL_MIN_SHARE * self.bucket_s else None

    def keys(self) -> set[str]:
        return {k for c in self._buckets.values() for k in c}


def chart_range(
    series: Series, now: float, window_s: float | None, kept_s: float
) -> tuple[float, float] | None:
    """The event time a rate chart covers, as (start, end); ``end`` is ``series``' clock.

    With ``window_s``, that many seconds up to the clock. With None ("fit the data"), from
    the first bucket holding data within the kept ``kept_s`` seconds; None when none does.
    """
    end = series.clock(now)
    if window_s is not None:
        return end - window_s, end
    first = series.first(end - kept_s, end)
    return None if first is None else (first, end)


def empty_window(keys: list[str]) -> dict[str, Any]:
    """What :meth:`Series.window` returns over no buckets at all."""
    return {"t": [], "rates": {k: [] for k in keys}}


@dataclass
class Gateway:
    edge_id: str
    bucket_s: float
    keep: int
    last_seen: float = 0.0  # newest record timestamp from this gateway (any topic)
    last_heartbeat: float | None = None
    models: dict[str, str] = field(default_factory=dict)  # stream -> version now scoring
    _model_ts: dict[str, float] = field(default_factory=dict)
    statuses: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_MAX_STATUS))
    events: Series = field(init=False)
    anomalous: Series = field(init=False)
    alerts: Series = field(init=False)

    def __post_init__(self) -> None:
        self.events = Series(self.bucket_s, self.keep)
        self.anomalous = Series(self.bucket_s, self.keep)
        self.alerts = Series(self.bucket_s, self.keep)


class LiveState:
    """Everything the fleet and detection pages show live. Thread-safe; no I/O."""

    def __init__(
        self, bucket_s: float = 10.0, window_s: float = 3600.0, offline_after_s: float = 60.0
    ) -> None:
        self.bucket_s = bucket_s
        self.window_s = window_s
        self.offline_after_s = offline_after_s
        self.keep = int(window_s // bucket_s) + 1
        self.lock = threading.Lock()
        self.gateways: dict[str, Gateway] = {}
        self.events = Series(bucket_s, self.keep)  # key: stream
        self.anomalous = Series(bucket_s, self.keep)  # key: stream
        self.decisions = Series(bucket_s, self.keep)  # key: approve | decline
        self.alerts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.labels: OrderedDict[str, str] = OrderedDict()  # event id -> kind
        self.scores: dict[tuple[str, str], deque[float]] = {}
        self.records = 0
        self.rejected = 0

    def _gateway(self, edge_id: str) -> Gateway:
        gw = self.gateways.get(edge_id)
        if gw is None:
            gw = self.gateways[edge_id] = Gateway(edge_id, self.bucket_s, self.keep)
        return gw

    def on_record(self, topic: str, value: bytes | None, record_ts: float) -> None:
        """Fold one replicated record in (``record_ts``: its Kafka timestamp, seconds)."""
        with self.lock:
            self.records += 1
            try:
                if topic == topics.LABELS:
                    if value is not None:
                        self._label(decode(Label, value))
                    return
                m = TOPIC.match(topic)
                if m is None:
                    return
                gw = self._gateway(m["edge"])
                gw.last_seen = max(gw.last_seen, record_ts)
                kind = m["kind"]
                if kind == "heartbeats":
                    gw.last_heartbeat = max(gw.last_heartbeat or 0.0, record_ts)
                elif value is None:
                    return
                elif kind == "model-status":
                    self._status(gw, decode(ModelStatus, value))
                elif kind == "alerts":
                    self._alert(gw, decode(Alert, value))
                else:
                    self._score(gw, decode(Score, value))
            except ContractError:
                self.rejected += 1  # counted and shown; never folded in half-read

    def _label(self, lab: Label) -> None:
        self.labels[lab.event_id] = lab.kind
        if len(self.labels) > _MAX_LABELS:
            self.labels.popitem(last=False)

    def _status(self, gw: Gateway, st: ModelStatus) -> None:
        gw.statuses.append(
            {
                "ts": st.ts,
                "stream": st.stream,
                "version": st.version,
                "state": st.state,
                "reason": st.reason,
            }
        )
        # A switch shows at once, before (or without) traffic scored with the new model;
        # scores from before the switch that replicate later do not take it back.
        if st.state == "active" and st.ts >= gw._model_ts.get(st.stream, 0.0):
            gw._model_ts[st.stream] = st.ts
            gw.models[st.stream] = st.version

    def _score(self, gw: Gateway, s: Score) -> None:
        gw.events.add(s.ts, s.stream)
        self.events.add(s.ts, s.stream)
        if s.anomalous:
            gw.anomalous.add(s.ts, s.stream)
            self.anomalous.add(s.ts, s.stream)
        spec = streams.find(s.stream)
        if spec is not None and spec.decides:  # the scorer declines exactly the anomalous events
            self.decisions.add(s.ts, "decline" if s.anomalous else "approve")
        if s.ts >= gw._model_ts.get(s.stream, 0.0):
            gw._model_ts[s.stream] = s.ts
            gw.models[s.stream] = s.model_version
        key = (s.stream, s.model_version)
        if key not in self.scores:
            self.scores[key] = deque(maxlen=_MAX_SCORES)
        self.scores[key].append(s.score)

    def _alert(self, gw: Gateway, a: Alert) -> None:
        if a.alert_id not in self.alerts:
            gw.alerts.add(a.start_ts, a.stream)
        self.alerts[a.alert_id] = {
            "alert_id": a.alert_id,
            "edge_id": gw.edge_id,
            "stream": a.stream,
            "token": a.token,
            "state": a.state,
            "start_ts": a.start_ts,
            "peak_ts": a.peak_ts,
            "end_ts": a.end_ts,
            "peak_score": a.peak_score,
            "threshold": a.threshold,
            "events": len(a.event_ids),
            "event_ids": list(a.event_ids[:200]),
            "top_features": [(c.feature, c.error) for c in a.top_features],
            "model_version": a.model_version,
        }
        self.alerts.move_to_end(a.alert_id)
        if len(self.alerts) > _MAX_ALERTS:
            self.alerts.popitem(last=False)

    # --- read side (call with the lock held or through these helpers) ------------------------

    def alert_kind(self, alert: dict[str, Any]) -> str:
        """The ground truth behind an alert, when labels have arrived for its events."""
        kinds = Counter(self.labels[e] for e in alert["event_ids"] if e in self.labels)
        return kinds.most_common(1)[0][0] if kinds else UNCONFIRMED

    def alert_series(self, start: float, end: float, now: float | None = None) -> dict[str, Any]:
        """Alerts opened per second, per ``stream:kind``, over [start, end]; ``now`` as in
        :meth:`Series.window`."""
        series = Series(self.bucket_s, self.keep)
        for a in self.alerts.values():
            series.add(a["start_ts"], f"{a['stream']}:{self.alert_kind(a)}")
        return series.window(start, end, sorted(series.keys()), now)


class KafkaWatcher:
    """Feeds a :class:`LiveState` from the cloud Kafka. ``start()`` connects, ``close()`` stops.

    Scores, alerts and heartbeats are read from ``window_s`` ago; model-status and labels from
    their beginning (a gateway's model history, the ground truth of older alerts). A new
    gateway's topics are picked up within seconds.
    """

    def __init__(self, bootstrap: Target, state: LiveState) -> None:
        self.bootstrap = bootstrap
        self.state = state
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        # (topic, partition) -> the next offset to read: a reassignment resumes there.
        self._next: dict[tuple[str, int], int] = {}

    def start(self) -> KafkaWatcher:
        self._consumer = Consumer(
            client_config(
                self.bootstrap,
                {
                    "group.id": f"fleetsentry-dashboard-{uuid.uuid4()}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "enable.partition.eof": False,
                    "topic.metadata.refresh.interval.ms": 5000,
                    "error_cb": self._on_error,
                },
            )
        )
        self._consumer.subscribe([SUBSCRIPTION, topics.LABELS], on_assign=self._on_assign)
        self._thread = threading.Thread(target=self._run, name="dashboard-kafka", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _on_error(self, err: Any) -> None:
        self.error = str(err)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Position every partition handed over: where this watcher stopped reading it (a new
        gateway's topics make the group hand everything over again: nothing is read twice);
        otherwise model-status and labels from their beginning, the rest from ``window_s``
        ago, or from the end as it is now when nothing is that recent."""
        since_ms = int((time.time() - self.state.window_s) * 1000)

        def whole(topic: str) -> bool:
            return topic == topics.LABELS or topic.endswith(".model-status")

        fresh = [p for p in partitions if (p.topic, p.partition) not in self._next]
        known = [
            TopicPartition(p.topic, p.partition, self._next[(p.topic, p.partition)])
            for p in partitions
            if (p.topic, p.partition) in self._next
        ]
        full = [
            TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in fresh if whole(p.topic)
        ]
        timed = [
            TopicPartition(p.topic, p.partition, since_ms) for p in fresh if not whole(p.topic)
        ]
        try:
            resolved = consumer.offsets_for_times(timed, timeout=10) if timed else []
            for p in resolved:
                if p.offset < 0:  # nothing that recent: from the end as it is now, a number
                    # (a logical end is resolved later and would skip what lands meanwhile)
                    p.offset = consumer.get_watermark_offsets(p, timeout=10)[1]
        except KafkaException as exc:
            self.error = f"cannot position on the replicated topics: {exc}"
            resolved = [TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in timed]
        consumer.assign(known + full + resolved)

    def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        try:
            while not self._stop.is_set():
                try:
                    msgs = consumer.consume(num_messages=1000, timeout=0.5)
                except KafkaException as exc:
                    self.error = str(exc)
                    self._stop.wait(1.0)
                    continue
                for msg in msgs:
                    if msg.error():
                        continue
                    self._next[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
                    _kind, ts_ms = msg.timestamp()
                    self.state.on_record(
                        msg.topic() or "", msg.value(), ts_ms / 1000 if ts_ms > 0 else time.time()
                    )
                if msgs:
                    self.error = None
        finally:
            consumer.close()
