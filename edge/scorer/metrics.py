"""The scorer's Prometheus metrics (on top of the shared families in edge.metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from edge import metrics as common

SERVICE = "scorer"
ANOMALOUS = Counter(
    "fleetsentry_scorer_anomalous_events",
    "Scored events above their model's threshold, by stream.",
    ["stream"],
)
ALERTS = Counter(
    "fleetsentry_scorer_alert_messages",
    "Alert messages (episode open/update/closed) written to the alerts topic.",
)
DECISIONS = Counter(
    "fleetsentry_scorer_payment_decisions", "Payment decisions published to vehicles."
)
OPEN_EPISODES = Gauge(
    "fleetsentry_scorer_open_episodes",
    "Alert episodes open right now (every stream whose alerts are episodes).",
)
UNSCORED = Counter(
    "fleetsentry_scorer_unscored",
    "Records of a declared stream passed through unscored (the gateway has no "
    "model for the stream yet), by stream.",
    ["stream"],
)
BATCH_SECONDS = Histogram(
    "fleetsentry_scorer_batch_seconds",
    "Seconds to score and commit one micro-batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
BATCH_EVENTS = Histogram(
    "fleetsentry_scorer_batch_events",
    "Events in one micro-batch.",
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384),
)


class Recorder:
    """Updates the metrics after each committed batch."""

    def __call__(self, result: Any, seconds: float, svc: Any) -> None:
        n = 0
        for stream, count in result.events.items():
            common.MESSAGES_IN.labels(service=SERVICE, stream=stream).inc(count)
            common.MESSAGES_OUT.labels(service=SERVICE, stream=stream).inc(count)
            ANOMALOUS.labels(stream=stream).inc(result.anomalous.get(stream, 0))
            n += count
        for stream, count in result.unscored.items():
            common.MESSAGES_IN.labels(service=SERVICE, stream=stream).inc(count)
            UNSCORED.labels(stream=stream).inc(count)
            n += count
        if result.rejected:
            common.DLQ_MESSAGES.labels(service=SERVICE, reason="contract").inc(result.rejected)
        ALERTS.inc(result.alerts)
        DECISIONS.inc(result.decisions)
        OPEN_EPISODES.set(svc.open_episodes())
        BATCH_SECONDS.observe(seconds)
        BATCH_EVENTS.observe(n)
