"""The one registry of Kafka topics: names, partitions, retention, compaction, replication.

Provisioning (``fleetsentry infra``) creates these idempotently; stages import the names from
here so a typo is an ImportError, not a silently empty topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared import streams

Cluster = Literal["edge", "cloud"]
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# raw.* holds personal data: kept briefly. dlq.ingest, which holds rejected raw input (sealed),
# is kept no longer, so nothing personal outlives the events it came with.
RAW_RETENTION_MS = 2 * DAY_MS


@dataclass(frozen=True)
class Topic:
    name: str
    cluster: Cluster
    partitions: int = 3
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False
    # Replicated edge -> cloud by MirrorMaker 2. raw.* never is: it holds PII.
    replicate: bool = False
    max_message_bytes: int | None = None
    # Roll segments this often: compaction only cleans closed segments, so a changelog that
    # is rewritten all day needs short ones to stay quick to restore.
    segment_ms: int | None = None
    # A compacted topic cut by size too (``compact,delete``, per partition): compaction keeps
    # one record per key for ever, so a writer inventing keys could otherwise fill the disk.
    # Only whole closed segments go, so it comes with small segments.
    retention_bytes: int | None = None
    segment_bytes: int | None = None

    def configs(self) -> dict[str, str]:
        policy = "compact" if self.compacted else "delete"
        if self.compacted and self.retention_bytes:
            policy = "compact,delete"
        conf = {
            "cleanup.policy": policy,
            "retention.ms": str(-1 if self.compacted else self.retention_ms),
        }
        if self.retention_bytes:
            conf["retention.bytes"] = str(self.retention_bytes)
        if self.max_message_bytes:
            conf["max.message.bytes"] = str(self.max_message_bytes)
        if self.segment_ms:
            conf["segment.ms"] = str(self.segment_ms)
        if self.segment_bytes:
            conf["segment.bytes"] = str(self.segment_bytes)
        return conf


DLQ_INGEST = "dlq.ingest"
ALERTS = "alerts"
MODEL_STATUS = "model-status"
MODELS = "models"
CLOUD_MODELS = "cloud.models"
LABELS = "labels"
# The enricher's per-key feature state and dedup windows, written in its transactions.
# Edge only (never replicated): it holds last positions of vehicles and cards.
ENRICHER_STATE = "enricher.state"
# The scorer's open alert episodes, written in its transactions (a restart resumes them).
SCORER_EPISODES = "scorer.episodes"

# The most one models-topic record may hold (a model bundle: shared/model_bundle.py). The
# shipped int8 autoencoders make bundles of tens of KB; the bound keeps one writer from
# filling disks with few records. Brokers allow a little more (shared/infra/kafka.py).
MODEL_MESSAGE_BYTES = 1024 * 1024
# What the models topics keep on disk, per partition (they have one): hundreds of releases,
# and a flood of invented keys is cut here instead of filling the disk. Retention may then
# delete a champion too: gateways notice and report it (edge/agent), and the cloud publishes
# every champion again at half its release's lifetime (cloud/publisher).
MODELS_SEGMENT_BYTES = 2 * MODEL_MESSAGE_BYTES
MODELS_RETENTION_BYTES = 32 * 1024 * 1024


def _edge_topics() -> list[Topic]:
    topics: list[Topic] = []
    for spec in streams.all_streams():
        # PII: short retention, edge only.
        topics.append(Topic(spec.raw_topic, "edge", retention_ms=RAW_RETENTION_MS))
        topics.append(Topic(spec.anon_topic, "edge", replicate=True))
        topics.append(Topic(spec.scores_topic, "edge", replicate=True))
    topics += [
        Topic(DLQ_INGEST, "edge", partitions=1, retention_ms=RAW_RETENTION_MS),
        Topic(ALERTS, "edge", replicate=True),
        Topic(MODEL_STATUS, "edge", partitions=1, replicate=True),
        # The gateway's disk plan (edge/disk.py) sets its own bound for this one.
        Topic(
            CLOUD_MODELS,
            "edge",
            partitions=1,
            compacted=True,
            max_message_bytes=MODEL_MESSAGE_BYTES,
            retention_bytes=MODELS_RETENTION_BYTES,
            segment_bytes=MODELS_SEGMENT_BYTES,
        ),
        Topic(ENRICHER_STATE, "edge", partitions=1, compacted=True, segment_ms=HOUR_MS // 6),
        Topic(SCORER_EPISODES, "edge", partitions=1, compacted=True),
    ]
    return topics


def _cloud_topics() -> list[Topic]:
    return [
        Topic(
            MODELS,
            "cloud",
            partitions=1,
            compacted=True,
            max_message_bytes=MODEL_MESSAGE_BYTES,
            retention_bytes=MODELS_RETENTION_BYTES,
            segment_bytes=MODELS_SEGMENT_BYTES,
        ),
        Topic(LABELS, "cloud", retention_ms=30 * DAY_MS),
    ]


def registry(cluster: Cluster) -> list[Topic]:
    """Every topic the given cluster must have, built from the registered streams."""
    return _edge_topics() if cluster == "edge" else _cloud_topics()


def replicated_edge_topics() -> list[str]:
    return [t.name for t in _edge_topics() if t.replicate]


# The built-in streams' topics (``RAW_TELEMETRY`` ... ``SCORES_PAYMENTS``), from their specs on
# first use: the specs are read from the shipped declarations, which import the feature code,
# which imports this module.
_BUILTIN_TOPICS = {
    f"{kind.upper()}_{stream.upper()}": (stream, f"{kind}_topic")
    for kind in ("raw", "anon", "scores")
    for stream in ("telemetry", "payments")
}


def __getattr__(name: str) -> str:
    if name in _BUILTIN_TOPICS:
        stream, attr = _BUILTIN_TOPICS[name]
        topic: str = getattr(streams.get(stream), attr)
        return topic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
