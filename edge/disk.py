"""The gateway's disk budget (``[disk] budget``), shared out, and the disk-usage metrics.

A full disk is the one fault that takes everything down at once: the edge Kafka has one log
dir, so an I/O error on it stops the broker, the bridge stops acknowledging, Mosquitto's
queues grow and drop, and every stage stalls. So every writer gets a bounded share of one
budget, and Kafka deletes old segments of a topic that reaches its share instead of filling
the disk. Time retention stays as it is (``raw.*`` 2 days for PII); bytes are an extra bound.

:func:`plan` derives from the budget (see ``docs/disk.md`` for a worked example):

* headroom (10 %) for what retention does not bound exactly: Kafka's active segments grow
  between two retention checks, index files, the metadata log and internal topics
  (``__consumer_offsets``, ``__transaction_state``), deleted segments waiting
  ``log.segment.delete.delay.ms``, and filesystem slack;
* the bridge's outage spool (10 %, :attr:`DiskPlan.spool_bytes`), Mosquitto's persistence
  (5 %), the vault in ``data_dir`` (5 %) and the installed models;
* the compacted state topics, a fixed reserve each, sized from the settings that bound their
  live keys; they are never cut by size (that could drop a live key a restart needs);
* the rest to the delete-policy topics, by weight per partition: each partition's share is
  its ``retention.bytes`` plus one segment (Kafka's ``retention.bytes`` is per partition and
  only whole, closed segments go), so their worst case sums to the share.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from edge.config import EdgeConfig
from edge.episode_rules import episode_rules
from shared import streams, topics
from shared.errors import ConfigError
from shared.kafka_config import Target, bootstrap_of, client_config

log = logging.getLogger("disk")

MIB = 1 << 20
HOUR_S = 3600
DAY_S = 24 * HOUR_S

HEADROOM_SHARE = 0.10
SPOOL_SHARE = 0.10
MOSQUITTO_SHARE = 0.05
VAULT_SHARE = 0.05
# A model bundle is tens of KB (the topic allows 1 MiB); reserves assume this per version.
MODEL_BYTES = 2 * MIB
# A feature state record (key, msgpack value, record overhead) and one dedup id in the
# enricher's changelog; one vehicle's episode state in the scorer's.
STATE_RECORD_BYTES = 160
DEDUP_ID_BYTES = 48
EPISODE_RECORD_BYTES = 200
# Kafka refuses topic segments under 1 MiB. A partition's share is about this many segments,
# so deleting its oldest frees a fifth of it; and it is at least MIN_SEGMENTS of them.
MIN_SEGMENT_BYTES = MIB
MAX_SEGMENT_BYTES = 64 * MIB
SEGMENTS_PER_PARTITION = 5
MIN_SEGMENTS = 3
# Weight of one partition of each delete-policy topic family in the Kafka share: raw.* and
# anon.* carry every event; scores.* is smaller records; alerts and model-status are rare;
# dlq.ingest (one partition) takes a flood's dead letters.
WEIGHTS = {"raw": 1.0, "anon": 1.0, "scores": 0.5, "alerts": 0.25, "dlq": 1.0, "model-status": 0.05}


@dataclass(frozen=True)
class TopicBudget:
    """One edge topic's bound on disk: per partition, as Kafka applies it."""

    name: str
    partitions: int
    # -1: never cut by size (compacted state: only expired keys go, see TopicBudget.configs).
    retention_bytes: int
    segment_bytes: int
    # The most the whole topic may hold on disk between two retention checks.
    reserved_bytes: int
    cleanup_policy: str
    retention_ms: int

    def configs(self) -> dict[str, str]:
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "retention.bytes": str(self.retention_bytes),
            "segment.bytes": str(self.segment_bytes),
        }


@dataclass(frozen=True)
class DiskPlan:
    """What each writer on the gateway may keep on disk, derived from ``[disk] budget``."""

    budget_bytes: int
    headroom_bytes: int
    spool_bytes: int  # the bridge's outage spool (edge/bridge/) stays under this
    mosquitto_bytes: int
    vault_bytes: int
    models_bytes: int  # installed versions in models_dir (keep_versions per stream)
    topics: tuple[TopicBudget, ...] = field(default_factory=tuple)

    @property
    def kafka_bytes(self) -> int:
        return sum(t.reserved_bytes for t in self.topics)

    def topic(self, name: str) -> TopicBudget:
        for t in self.topics:
            if t.name == name:
                return t
        raise KeyError(name)

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Topic name -> the configs this plan sets (on top of the registry's)."""
        return {t.name: t.configs() for t in self.topics}

    def rows(self) -> list[tuple[str, int]]:
        """(what, bytes) for a table: everything the budget is shared into."""
        out = [
            (
                "headroom (Kafka indexes, internal topics, growth between checks)",
                self.headroom_bytes,
            ),
            ("bridge outage spool", self.spool_bytes),
            ("Mosquitto persistence", self.mosquitto_bytes),
            ("vault (data_dir)", self.vault_bytes),
            ("installed models (models_dir)", self.models_bytes),
        ]
        return out + [(f"topic {t.name}", t.reserved_bytes) for t in self.topics]


def plan(config: EdgeConfig) -> DiskPlan:
    """Share ``config.disk.budget`` out; a budget too small for the fixed reserves raises
    ConfigError naming ``disk.budget`` and the least that works."""
    budget = config.disk.budget_bytes
    shared = _share(config, budget)
    if shared is None:
        lo, hi = MIB, max(budget, MIB)
        while _share(config, hi) is None:
            lo, hi = hi, 2 * hi
        while hi - lo > MIB:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _share(config, mid) is not None else (mid, hi)
        raise ConfigError(
            f"a budget of {human(budget)} leaves too little for Kafka's "
            f"topics; give the gateway at least {human(hi)}",
            setting="disk.budget",
        )
    return shared


def _share(config: EdgeConfig, budget: int) -> DiskPlan | None:
    headroom = int(budget * HEADROOM_SHARE)
    spool = int(budget * SPOOL_SHARE)
    mosquitto = int(budget * MOSQUITTO_SHARE)
    vault = int(budget * VAULT_SHARE)
    n_streams = len(streams.all_streams())
    # Every kept version, and one more being verified in staging.
    models = n_streams * (config.agent.keep_versions + 1) * MODEL_BYTES
    compacted = _compacted_topics(config)
    kafka_left = (
        budget
        - headroom
        - spool
        - mosquitto
        - vault
        - models
        - sum(t.reserved_bytes for t in compacted)
    )
    deleting = _delete_topics(kafka_left)
    if deleting is None:
        return None
    return DiskPlan(budget, headroom, spool, mosquitto, vault, models, tuple(deleting + compacted))


def _family(name: str) -> str:
    for prefix in ("raw", "anon", "scores"):
        if name.startswith(prefix + "."):
            return prefix
    return "dlq" if name == topics.DLQ_INGEST else name


def _delete_topics(share: int) -> list[TopicBudget] | None:
    """Each partition MIN_SEGMENTS segments, the rest by weight; None when that won't fit."""
    wanted = [t for t in topics.registry("edge") if not t.compacted]
    floor = MIN_SEGMENTS * MIN_SEGMENT_BYTES
    spare = share - floor * sum(t.partitions for t in wanted)
    if spare < 0:
        return None
    units = sum(WEIGHTS[_family(t.name)] * t.partitions for t in wanted)
    out = []
    for t in wanted:
        per_partition = floor + int(spare * WEIGHTS[_family(t.name)] / units)
        segment = min(
            MAX_SEGMENT_BYTES, max(MIN_SEGMENT_BYTES, per_partition // SEGMENTS_PER_PARTITION)
        )
        out.append(
            TopicBudget(
                t.name,
                t.partitions,
                per_partition - segment,
                segment,
                per_partition * t.partitions,
                "delete",
                t.retention_ms,
            )
        )
    return out


def _compacted_topics(config: EdgeConfig) -> list[TopicBudget]:
    """The state topics: sized from what bounds their live keys, cut by time only.

    Compaction alone keeps a key's latest record for ever, so keys that are gone (a vehicle
    sold, a card used once) would stay. ``compact,delete`` with a ``retention.ms`` well above
    how long a key may stay unwritten and still be alive drops whole segments whose NEWEST
    record is older than that: a live key is rewritten within its TTL, so its latest record is
    never in such a segment. No ``retention.bytes``: cutting a state topic by size would drop
    live keys a restart needs.

    * ``enricher.state``: the enricher tombstones a key not written for ``state_ttl_s`` and
      the dedup ids of batches that left its window; ``retention.ms`` is twice the TTL and
      longer than a bridge session may queue redeliveries plus raw.*'s retention, so even a
      gateway stopped for a while restores every key the enricher would not expire itself.
    * ``scorer.episodes``: an episode closes after its stream's quiet gap of wall time
      without an anomaly (its key is tombstoned), so a state older than a week is dead.
    * ``cloud.models``: compacted, never cut by time: the latest model per stream must stay
      however long ago it was published (a restored gateway installs it), and the topic holds
      one record per stream once compacted; short segments let compaction reach superseded
      versions, and the reserve holds ``keep_versions`` of them per stream meanwhile. Cut by
      size too (``compact,delete``): compaction keeps a record per key for ever, and anyone
      who can write the cloud's ``models`` could invent keys until every gateway's disk is
      full. A flood may then delete a champion; the agent notices and reports that, and the
      cloud publishes its champions again (``topics.MODELS_RETENTION_BYTES``).
    """
    enricher, scorer = config.enricher, config.scorer
    raw_partitions = sum(t.partitions for t in topics.registry("edge") if t.name.startswith("raw."))
    state_live = (
        enricher.max_states * STATE_RECORD_BYTES
        + raw_partitions * enricher.dedup_window * DEDUP_ID_BYTES
    )
    state_ms = int(
        1000
        * max(
            2 * enricher.state_ttl_s,
            config.bridge.session_expiry_s + topics.RAW_RETENTION_MS / 1000 + DAY_S,
        )
    )
    episodes_live = max(1, enricher.max_states // 3) * EPISODE_RECORD_BYTES
    quiet_s = max((r.quiet_gap_s for r in episode_rules(scorer).values()), default=0.0)
    episodes_ms = int(1000 * max(7 * DAY_S, 100 * quiet_s))
    n_streams = len(streams.all_streams())
    models_segment = topics.MODELS_SEGMENT_BYTES
    models_kept = n_streams * config.agent.keep_versions * MODEL_BYTES
    models_reserve = models_kept + 2 * models_segment
    return [
        _compacted(topics.ENRICHER_STATE, state_live, "compact,delete", state_ms),
        _compacted(topics.SCORER_EPISODES, episodes_live, "compact,delete", episodes_ms),
        TopicBudget(
            topics.CLOUD_MODELS,
            1,
            models_kept,
            models_segment,
            models_reserve,
            "compact,delete",
            -1,
        ),
    ]


def _compacted(name: str, live: int, policy: str, retention_ms: int) -> TopicBudget:
    # The cleaner runs once dirty records are half the log (min.cleanable.dirty.ratio 0.5)
    # and never touches the active segment: live + as much dirty + two segments.
    segment = min(MAX_SEGMENT_BYTES, max(MIN_SEGMENT_BYTES, live // 2))
    return TopicBudget(name, 1, -1, segment, 2 * live + 2 * segment, policy, retention_ms)


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# --- usage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """The filesystem holding ``path``: its size and free bytes, and what the gateway uses."""

    path: Path
    size_bytes: int
    free_bytes: int  # what an unprivileged process may still write (f_bavail)
    used_bytes: int

    @property
    def used_ratio(self) -> float:
        return self.used_bytes / self.size_bytes if self.size_bytes else 0.0


def filesystem_usage(path: Path) -> Usage:
    st = os.statvfs(path)
    size = st.f_blocks * st.f_frsize
    return Usage(path, size, st.f_bavail * st.f_frsize, size - st.f_bfree * st.f_frsize)


def tree_bytes(paths: Iterable[Path]) -> int:
    """Bytes allocated under ``paths`` (like ``du``); what cannot be read is left out."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(p) for p in paths]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total


def watched_paths(config: EdgeConfig) -> list[Path]:
    """The directories whose files count against the budget (``[disk] paths`` + data_dir)."""
    out = [config.data_dir.expanduser()]
    out += [p.expanduser() for p in config.disk.paths if p.expanduser() not in out]
    return out


class DiskCollector:
    """Prometheus collector: measured when scraped, so the figures are never stale.

    Families: ``fleetsentry_disk_size_bytes``, ``fleetsentry_disk_free_bytes`` and
    ``fleetsentry_disk_used_bytes`` per filesystem holding a watched path (labelled with the
    first such path), ``fleetsentry_disk_budget_bytes``, ``fleetsentry_disk_gateway_bytes``
    (what the watched directories hold) and ``fleetsentry_disk_budget_used_ratio``.
    """

    def __init__(self, config: EdgeConfig, disk_plan: DiskPlan) -> None:
        self.paths = watched_paths(config)
        self.plan = disk_plan

    def filesystems(self) -> list[Usage]:
        out: list[Usage] = []
        devices: set[int] = set()
        for path in self.paths:
            try:
                dev = path.stat().st_dev
                if dev not in devices:
                    devices.add(dev)
                    out.append(filesystem_usage(path))
            except OSError:
                continue
        return out

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "fleetsentry_disk_size_bytes",
            "Size of the filesystem holding a gateway data directory.",
            labels=["path"],
        )
        free = GaugeMetricFamily(
            "fleetsentry_disk_free_bytes",
            "Bytes the gateway's services may still write on that "
            "filesystem (Kafka stops when it reaches 0).",
            labels=["path"],
        )
        used = GaugeMetricFamily(
            "fleetsentry_disk_used_bytes",
            "Bytes used on that filesystem, by anything.",
            labels=["path"],
        )
        for fs in self.filesystems():
            size.add_metric([str(fs.path)], fs.size_bytes)
            free.add_metric([str(fs.path)], fs.free_bytes)
            used.add_metric([str(fs.path)], fs.used_bytes)
        mine = tree_bytes(self.paths)
        yield size
        yield free
        yield used
        yield GaugeMetricFamily(
            "fleetsentry_disk_budget_bytes",
            "The gateway's disk budget ([disk] budget).",
            value=self.plan.budget_bytes,
        )
        yield GaugeMetricFamily(
            "fleetsentry_disk_gateway_bytes",
            "Bytes the gateway's directories ([disk] paths, data_dir) hold.",
            value=mine,
        )
        yield GaugeMetricFamily(
            "fleetsentry_disk_budget_used_ratio",
            "Share of the disk budget the gateway's directories use.",
            value=mine / self.plan.budget_bytes,
        )


def apply_topic_plan(kafka: Target, disk_plan: DiskPlan, timeout: float = 30.0) -> None:
    """Give the existing edge topics the plan's configs (idempotent; other configs stay).

    Raises InfraError when Kafka does not take them (unreachable, a topic missing)."""
    from confluent_kafka.admin import AdminClient

    from shared.infra.topics_admin import set_topic_configs

    admin = AdminClient(client_config(kafka))
    set_topic_configs(admin, bootstrap_of(kafka), disk_plan.topic_configs(), timeout)


def is_disk_full(exc: OSError) -> bool:
    """A write failed for lack of space (or quota), rather than for a bug."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
