"""MirrorMaker 2 in dedicated mode: one process per gateway, between its edge Kafka and the cloud.

Two flows run in the one process:

- ``<edge_id> -> cloud``: the registry's replicated topics (anon.*, scores.*, alerts,
  model-status). DefaultReplicationPolicy prefixes the source alias, so the cloud sees
  ``edge-1.anon.payments``. ``raw.*`` holds PII and is never listed (and excluded besides).
- ``cloud -> <edge_id>``: ``models``, arriving on the edge as ``cloud.models``.

Exactly-once source support is enabled for both target clusters (KIP-618). In dedicated mode
that needs the internal REST server of KIP-710 (``dedicated.mode.enable.internal.rest``) so the
worker leader can fence zombie tasks; it listens on loopback only. Source consumers read
committed records only, so aborted transactions on the edge never reach the cloud.

After an outage the backlog crosses as fast as the edge serves it, unless ``max_bytes_per_s``
caps it: a quota the edge broker enforces on MirrorMaker's login (``shared/infra/quota.py``).
``backlog()`` says how much is still to cross and how much retention deleted before it could
(docs/store-and-forward.md).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import topics
from shared.errors import ConfigError
from shared.infra import jars, ports, process, quota
from shared.infra.errors import InfraError, ServiceStartError
from shared.infra.files import write_private
from shared.infra.kafka import log4j2_yaml
from shared.kafka_config import KafkaSettings, Target, client_config, java_properties

CLOUD_ALIAS = "cloud"
MAIN_CLASS = "org.apache.kafka.connect.mirror.MirrorMaker"
# Exactly-once commits one producer transaction per boundary. KIP-618's default boundary is
# every poll batch (at most max.poll.records): a commit per few hundred records, each writing
# markers to every partition it touched, and the next batch's sends retry on
# CONCURRENT_TRANSACTIONS until the markers are done. An interval boundary commits whatever
# the task polled in that time instead; records become visible in the target at most this
# much later.
TRANSACTION_INTERVAL_MS = 1000
# What crosses the gateway's uplink is compressed by MirrorMaker's producer to the cloud.
# zstd: 250 bytes per event against lz4's 607 (none: 2,031) for the same MirrorMaker CPU
# per event (bench/replication.py --forward; docs/store-and-forward.md).
CLOUD_COMPRESSION = "zstd"
# An alias ends up in topic names and consumer group ids: keep it to safe characters, and
# without dots, because the replication policy splits topic names on dots.
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

MIRROR_LOGGERS = {
    "org.apache.kafka.connect.mirror.MirrorMaker": "INFO",
    "org.apache.kafka.connect.runtime.WorkerTask": "INFO",
    "org.apache.kafka.connect.runtime.distributed": "INFO",
    "org.apache.kafka.clients.NetworkClient": "ERROR",
}


def validate_alias(edge_id: str) -> str:
    if not _ALIAS.match(edge_id) or edge_id == CLOUD_ALIAS:
        raise InfraError(
            f"edge id {edge_id!r} cannot be a MirrorMaker cluster alias: use letters, digits, "
            f"'-' or '_' (no dots, at most 63 characters, not {CLOUD_ALIAS!r}), e.g. 'edge-1'"
        )
    return edge_id


def edge_topic_patterns() -> list[str]:
    """The edge -> cloud topic list, as exact-name regexes from the registry."""
    return [re.escape(name) for name in topics.replicated_edge_topics()]


@dataclass(frozen=True)
class Mirror:
    """One gateway's MirrorMaker 2. Constructing it does no I/O; ``start`` does.

    ``rest_port`` is the loopback port of the internal REST server; 0 picks a free one at
    start (kept in the written config, so a restart reuses it while free).
    """

    edge_id: str
    edge_bootstrap: str
    cloud_bootstrap: str
    home: Path
    rest_port: int = 0
    heap: str = "320m"
    cloud_replication_factor: int = 3
    edge_replication_factor: int = 1
    tasks_max: int = 2
    # Extra MirrorMaker properties, applied last (tuning or trying a setting out).
    overrides: tuple[tuple[str, Any], ...] = ()
    # How MirrorMaker logs in to the gateway's Kafka (its bootstrap wins over edge_bootstrap);
    # None: without authentication.
    edge_login: Target | None = None
    # Cap on the bytes per second MirrorMaker reads from the gateway's Kafka (so sends to the
    # cloud), enforced by the edge broker as a client quota on MirrorMaker's login; 0: none.
    max_bytes_per_s: int = 0
    # How MirrorMaker logs in to the cloud (the gateway's own login, TLS; its bootstrap wins
    # over cloud_bootstrap); None: without authentication.
    cloud_login: Target | None = None

    def __post_init__(self) -> None:
        quota.validate_rate(self.max_bytes_per_s, "mirror.max_bytes_per_s")
        if self.max_bytes_per_s and not self._edge_user():
            raise ConfigError(
                "needs MirrorMaker's own login on the edge Kafka (the cap is a quota on it); "
                "set it to 0 for an edge Kafka without authentication",
                setting="mirror.max_bytes_per_s",
            )

    def _edge_user(self) -> str:
        login = self.edge_login
        return login.username if isinstance(login, KafkaSettings) else ""

    @property
    def edge(self) -> Target:
        return self.edge_login or self.edge_bootstrap

    @property
    def cloud(self) -> Target:
        return self.cloud_login or self.cloud_bootstrap

    @property
    def dir(self) -> Path:
        return self.home / f"mirror-{self.edge_id}"

    @property
    def config_path(self) -> Path:
        return self.dir / "mm2.properties"

    @property
    def pid_file(self) -> Path:
        return self.dir / "mirror.pid"

    @property
    def quota_config_path(self) -> Path:
        return self.dir / "edge-login.properties"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def cloud_topic(self, edge_topic: str) -> str:
        """The name an edge topic carries in the cloud (DefaultReplicationPolicy)."""
        return f"{self.edge_id}.{edge_topic}"

    @staticmethod
    def edge_topic(cloud_topic: str) -> str:
        return f"{CLOUD_ALIAS}.{cloud_topic}"

    # --- configuration ------------------------------------------------------------------

    def properties(self, rest_port: int) -> dict[str, Any]:
        edge, cloud = validate_alias(self.edge_id), CLOUD_ALIAS
        rf = {edge: self.edge_replication_factor, cloud: self.cloud_replication_factor}
        conf: dict[str, Any] = {
            "clusters": f"{edge}, {cloud}",
            **{f"{edge}.{k}": v for k, v in java_properties(self.edge).items()},
            **{f"{cloud}.{k}": v for k, v in java_properties(self.cloud).items()},
            **_flows(edge, cloud),
            **_exactly_once(edge, cloud, rest_port),
            **_no_group_sync(),
            "refresh.topics.interval.seconds": 10,
            # Every plugin on the classpath has a ServiceLoader manifest: skip the slow scan.
            "plugin.discovery": "service_load",
            "tasks.max": self.tasks_max,
            # The cloud -> edge flow carries only the models topic.
            f"{cloud}->{edge}.tasks.max": 1,
            # Heartbeats are emitted on the edge (by the cloud -> edge flow) and replicated to
            # the cloud as <edge_id>.heartbeats, where their age is the gateway's replication
            # lag. Heartbeats written into the cloud would only travel back as cloud.heartbeats
            # on every gateway, and cost each gateway a transaction a second on the cloud.
            f"{edge}->{cloud}.emit.heartbeats.enabled": "false",
            **_cloud_outage_and_batching(edge, cloud),
        }
        for alias in (edge, cloud):
            conf.update(_worker(alias, rf[alias]))
        for src, dst in ((edge, cloud), (cloud, edge)):
            conf.update(_flow(src, dst, rf[dst]))
        if self.max_bytes_per_s:
            conf[f"{edge}.consumer.fetch.max.bytes"] = quota.fetch_max_bytes(self.max_bytes_per_s)
        conf.update(self.overrides)
        return conf

    def _written_rest_port(self) -> int | None:
        try:
            text = self.config_path.read_text()
        except FileNotFoundError:
            return None
        match = re.search(r"^listeners = http://127\.0\.0\.1:(\d+)$", text, re.M)
        return int(match.group(1)) if match else None

    def _pick_rest_port(self) -> int:
        if self.rest_port:
            return self.rest_port
        previous = self._written_rest_port()
        if previous and ports.is_free("127.0.0.1", previous):
            return previous
        return ports.free_ports(1)[0]

    def _write_config(self, rest_port: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k} = {v}\n" for k, v in self.properties(rest_port).items()]
        # It holds the gateway's Kafka password: readable by its owner only.
        write_private(self.config_path, "".join(lines))
        (self.dir / "log4j2.yaml").write_text(
            log4j2_yaml(self.log_dir, "mirror", "WARN", MIRROR_LOGGERS)
        )

    # --- lifecycle ----------------------------------------------------------------------

    def pid(self) -> int | None:
        return process.read_pid(self.pid_file, str(self.config_path))

    def start(self, libs: Path | None = None, java: str | None = None) -> int | None:
        """Start MirrorMaker unless it already runs; returns the new pid (None if running)."""
        if self.pid() is not None:
            return None
        java = java or jars.java_binary()
        libs = libs or jars.kafka_libs(quiet=True)
        self._write_config(self._pick_rest_port())
        self.apply_read_cap(libs, java)
        return process.spawn(self.argv(libs, java), self.pid_file, self.log_dir / "stdout.log")

    def argv(self, libs: Path, java: str) -> list[str]:
        """MirrorMaker's command line (its config written by ``start``)."""
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:MaxDirectMemorySize=128m",
            "-Djava.awt.headless=true",
            *jars.class_data_sharing(self._archive, libs, java, MAIN_CLASS),
            *jars.extra_jvm_opts(),
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.yaml'}",
            "-cp",
            jars.classpath(libs),
            MAIN_CLASS,
            str(self.config_path),
        ]

    def apply_read_cap(self, libs: Path | None = None, java: str | None = None) -> None:
        """Set ``max_bytes_per_s`` as the edge broker's quota on MirrorMaker's login, or remove
        the quota when it is 0. Idempotent; runs at every start, and may run while MirrorMaker
        runs (the broker applies a changed quota within a second).

        A file beside the config remembers a cap was set, so a start without one spends no
        JVM on removing a quota that was never there."""
        user = self._edge_user()
        marker = self.dir / "read-cap"
        if not user or (not self.max_bytes_per_s and not marker.exists()):
            return
        login = java_properties(self.edge)
        write_private(self.quota_config_path, quota.client_properties(login))
        quota.apply(
            quota.config_command_argv(
                java or jars.java_binary(),
                jars.classpath(libs or jars.kafka_libs(quiet=True)),
                login["bootstrap.servers"],
                self.quota_config_path,
                user,
                self.max_bytes_per_s,
            )
        )
        if self.max_bytes_per_s:
            marker.write_text(f"{self.max_bytes_per_s}\n")
        else:
            marker.unlink()

    @property
    def _archive(self) -> Path:
        return self.dir / "mirror-classes.jsa"

    def stop(self, timeout: float = 30.0) -> list[int]:
        pid = self.pid()
        if pid is None:
            return []
        killed = process.stop([pid], timeout)
        if not killed and self._archive.exists():  # it exited whole: its class archive too
            jars.share_archives([self._archive], MAIN_CLASS)
        return killed

    def check_exited(self) -> None:
        if self.pid() is None:
            log = self.log_dir / "stdout.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise ServiceStartError(
                f"MirrorMaker for {self.edge_id} is not running; see {self.log_dir}\n{tail}"
            )

    def task_states(self, timeout: float = 5.0) -> dict[str, str]:
        """``"<flow>/<connector or task>" -> state`` read from both Connect status topics.

        Empty for a flow whose target cluster is unreachable.
        """
        statuses = connect_statuses(self.edge_id, self.edge, self.cloud, timeout)
        return {name: str(s.status["state"]) for name, s in statuses.items()}

    def failed_tasks(self, since: float = 0.0, timeout: float = 5.0) -> dict[str, str]:
        """The source connectors and tasks Connect has killed (and reported so after epoch
        second ``since``) -> the first line of the error."""
        return failed_since(connect_statuses(self.edge_id, self.edge, self.cloud, timeout), since)

    def heal(self) -> dict[str, str]:
        """Restart MirrorMaker when Connect has killed one of its source connectors or tasks
        since it started; returns what had failed ({}: nothing was done). Exactly-once makes
        the restart safe: the new tasks resume from the offsets committed with the records.

        A status written before this MirrorMaker started is the last process's: once
        restarted, it takes the new process's own report of a failure to restart it again."""
        pid = self.pid()
        if pid is None:
            return {}
        failed = self.failed_tasks(since=self.pid_file.stat().st_mtime)
        if failed:
            self.stop()
            self.start()
        return failed

    def healthy(self) -> bool:
        """Running, REST listening, and the source connectors of both flows RUNNING."""
        if self.pid() is None:
            return False
        port = self._written_rest_port()
        if not port or not ports.wait_listening("127.0.0.1", port, 0.5):
            return False
        states = self.task_states()
        for flow in (f"{self.edge_id}->{CLOUD_ALIAS}", f"{CLOUD_ALIAS}->{self.edge_id}"):
            connector = states.get(f"{flow}/connector-MirrorSourceConnector")
            tasks = [v for k, v in states.items() if k.startswith(f"{flow}/task-MirrorSource")]
            if connector != "RUNNING" or not tasks or any(t != "RUNNING" for t in tasks):
                return False
        return True

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_exited()
            if self.healthy():
                return
            time.sleep(0.5)
        raise ServiceStartError(
            f"MirrorMaker for {self.edge_id} did not report both flows RUNNING within "
            f"{timeout:.0f}s; see {self.log_dir}"
        )

    def copied_up_to(self, timeout: float = 10.0) -> dict[tuple[str, int], int]:
        """The next edge offset MirrorMaker will copy, per edge partition it has copied from:
        its source offsets, kept in the cloud ({} while the cloud is unreachable)."""
        raw = _read_compacted(self.cloud, f"mm2-offsets.{self.edge_id}.internal", timeout)
        return parse_source_offsets(self.edge_id, raw)

    def backlog(self, timeout: float = 10.0) -> dict[str, dict[str, int]]:
        """``"<topic>-<partition>" -> {"behind": n, "deleted": n}`` per replicated edge
        partition: offsets not yet copied to the cloud, and offsets retention deleted on the
        edge before MirrorMaker copied them (lost to the cloud; MirrorMaker skips to the oldest
        one left). Offsets count the producers' transaction markers too: a drained partition
        shows one or two behind."""
        from confluent_kafka import Consumer

        from shared.kafka_read import watermarks

        copied = self.copied_up_to(timeout)
        if not copied and not _reachable(self.cloud, timeout):
            raise InfraError(
                "the cloud Kafka is unreachable, and MirrorMaker keeps its position "
                "there: the backlog is known again once the cloud is back"
            )
        consumer = Consumer(
            client_config(
                self.edge,
                {
                    "group.id": "fleetsentry-mirror-backlog",
                    "enable.auto.commit": False,
                    "log_level": 0,
                },
            )
        )
        out: dict[str, dict[str, int]] = {}
        try:
            meta = consumer.list_topics(timeout=timeout).topics
            for name in topics.replicated_edge_topics():
                parts = sorted(meta[name].partitions) if name in meta else []
                for part, (low, high) in watermarks(consumer, name, parts, timeout).items():
                    done = copied.get((name, part), 0)
                    out[f"{name}-{part}"] = {
                        "behind": max(0, high - max(low, done)),
                        "deleted": max(0, low - done),
                    }
        finally:
            consumer.close()
        return out

    def status(self) -> dict[str, Any]:
        pid = self.pid()
        return {
            "edge_id": self.edge_id,
            "edge_bootstrap": self.edge_bootstrap,
            "cloud_bootstrap": self.cloud_bootstrap,
            "pids": [pid] if pid else [],
            "healthy": self.healthy(),
            "tasks": self.task_states() if pid else {},
            "backlog": self._backlog_or_none(),
            "home": str(self.dir),
        }

    def _backlog_or_none(self) -> dict[str, dict[str, int]] | None:
        try:
            return self.backlog(timeout=5.0)
        except Exception:  # the edge or the cloud is unreachable: status reports, never crashes
            return None


def _flows(edge: str, cloud: str) -> dict[str, Any]:
    """What flows where: the edge's replicated topics up, the models topic down."""
    return {
        "replication.policy.class": "org.apache.kafka.connect.mirror.DefaultReplicationPolicy",
        "replication.policy.separator": ".",
        f"{edge}->{cloud}.enabled": "true",
        f"{edge}->{cloud}.topics": ", ".join(edge_topic_patterns()),
        # Belt and braces: even a widened topic list could never take PII along.
        f"{edge}->{cloud}.topics.exclude": r"raw\..*, .*[\-\.]internal, .*\.replica, __.*",
        f"{cloud}->{edge}.enabled": "true",
        f"{cloud}->{edge}.topics": re.escape(topics.MODELS),
        f"{cloud}->{edge}.topics.exclude": r".*[\-\.]internal, .*\.replica, __.*",
    }


def _exactly_once(edge: str, cloud: str, rest_port: int) -> dict[str, Any]:
    return {
        # Exactly-once (KIP-618) for writes to both clusters; needs KIP-710's REST.
        f"{edge}.exactly.once.source.support": "enabled",
        f"{cloud}.exactly.once.source.support": "enabled",
        f"{edge}.consumer.isolation.level": "read_committed",
        f"{cloud}.consumer.isolation.level": "read_committed",
        "dedicated.mode.enable.internal.rest": "true",
        "listeners": f"http://127.0.0.1:{rest_port}",
    }


def _no_group_sync() -> dict[str, Any]:
    return {
        # Consumer groups are not failed over between edge and cloud (no group matches, so
        # the checkpoint connector runs no task), and the brokers have no authorizer.
        "groups.exclude": ".*",
        "refresh.groups.enabled": "false",
        "sync.group.offsets.enabled": "false",
        # With no group offsets to translate, checkpoints and the offset syncs they are
        # computed from are pure overhead: a topic on each side and a producer per task.
        # MirrorMaker then refuses the checkpoint connector's configuration (it logs
        # "Failed to configure MirrorCheckpointConnector" once per flow at start): that is
        # how the connector is left out.
        "emit.checkpoints.enabled": "false",
        "emit.offset-syncs.enabled": "false",
        "sync.topic.acls.enabled": "false",
    }


def _cloud_outage_and_batching(edge: str, cloud: str) -> dict[str, Any]:
    return {
        # Riding out a cloud outage: sends wait for the cloud instead of failing the task.
        f"{cloud}.producer.delivery.timeout.ms": 2_147_483_647,
        f"{cloud}.producer.max.block.ms": 2_147_483_647,
        f"{cloud}.producer.linger.ms": 20,
        f"{cloud}.producer.batch.size": 256 * 1024,
        f"{cloud}.producer.compression.type": CLOUD_COMPRESSION,
        f"{edge}.producer.compression.type": "lz4",
        # Fewer, larger polls: a transaction spans several of them anyway.
        f"{edge}.consumer.max.poll.records": 5000,
        f"{edge}.consumer.fetch.max.wait.ms": 100,
    }


def _worker(alias: str, replication_factor: int) -> dict[str, Any]:
    """The Connect worker's settings for the cluster ``alias`` names."""
    conf: dict[str, Any] = {}
    # Worker settings take the target cluster's prefix: MirrorMaker ignores most
    # top-level worker settings in dedicated mode.
    conf[f"{alias}.plugin.discovery"] = "service_load"
    conf[f"{alias}.offset.flush.interval.ms"] = 5000
    # One worker per flow: when it rejoins after an outage (it revokes its tasks once
    # the coordinator is unreachable) its own former tasks must not wait out the
    # default 5 minutes kept for a departed member.
    conf[f"{alias}.scheduled.rebalance.max.delay.ms"] = 1000
    for store in ("config", "offset", "status"):
        conf[f"{alias}.{store}.storage.replication.factor"] = replication_factor
    # One gateway's offsets and statuses are a few dozen keys. Connect's defaults (25
    # and 5 partitions) are for shared clusters of many connectors; each offset
    # partition a transaction touches takes a commit marker, and a (re)starting
    # worker reads every partition to its end before its tasks run.
    conf[f"{alias}.offset.storage.partitions"] = 1
    conf[f"{alias}.status.storage.partitions"] = 1
    return conf


def _flow(src: str, dst: str, replication_factor: int) -> dict[str, Any]:
    """The settings of the flow ``src`` -> ``dst``."""
    conf: dict[str, Any] = {}
    conf[f"{src}->{dst}.transaction.boundary"] = "interval"
    conf[f"{src}->{dst}.transaction.boundary.interval.ms"] = TRANSACTION_INTERVAL_MS
    conf[f"{src}->{dst}.replication.factor"] = replication_factor
    conf[f"{src}->{dst}.heartbeats.topic.replication.factor"] = replication_factor
    # No offset-syncs.* setting: with offset syncs off, the source connector rejects any.
    return conf


def parse_source_offsets(edge_id: str, raw: dict[str, bytes | None]) -> dict[tuple[str, int], int]:
    """MirrorSourceConnector's offsets-topic entries -> next offset per edge partition.

    Keys look like ``["MirrorSourceConnector",{"cluster":"edge-1","partition":0,"topic":
    "anon.telemetry"}]``, values like ``{"offset":41}``: the last offset copied, so MirrorMaker
    resumes at 42.
    """
    out: dict[tuple[str, int], int] = {}
    for key, value in raw.items():
        try:
            connector, part = json.loads(key)
            offset = json.loads(value)["offset"] if value is not None else None
        except (ValueError, TypeError, KeyError):
            continue
        if (
            connector == "MirrorSourceConnector"
            and isinstance(part, dict)
            and part.get("cluster") == edge_id
            and isinstance(offset, int)
        ):
            out[(str(part["topic"]), int(part["partition"]))] = offset + 1
    return out


@dataclass(frozen=True)
class ConnectStatus:
    """A connector's or task's latest status record: its JSON (state, trace, worker) and when
    it was written (epoch seconds)."""

    status: dict[str, Any]
    written: float


def connect_statuses(
    edge_id: str, edge: Target, cloud: Target, timeout: float = 5.0
) -> dict[str, ConnectStatus]:
    """``"<flow>/<connector or task>" -> status`` of gateway ``edge_id``'s MirrorMaker, read
    from both flows' Connect status topics (each on its flow's target cluster); nothing for a
    flow whose target is unreachable."""
    out: dict[str, ConnectStatus] = {}
    for src, dst, target in ((edge_id, CLOUD_ALIAS, cloud), (CLOUD_ALIAS, edge_id, edge)):
        topic = f"mm2-status.{src}.internal"
        for key, (value, written) in _read_compacted_stamped(target, topic, timeout).items():
            if value is None or not key.startswith(("status-task-", "status-connector-")):
                continue
            try:
                status = json.loads(value)
            except ValueError:
                continue
            if isinstance(status, dict) and status.get("state"):
                out[f"{src}->{dst}/{key.split('-', 1)[1]}"] = ConnectStatus(status, written)
    return out


def failed_since(statuses: dict[str, ConnectStatus], since: float) -> dict[str, str]:
    """The source connectors and tasks reported FAILED after epoch second ``since`` -> the
    first line of their error.

    Connect does not restart them (nor does MirrorMaker's dedicated mode offer its REST call
    to): the process runs on while the partitions a dead task copied stay behind for good."""
    return {
        name: str(s.status.get("trace") or "").strip().split("\n", 1)[0]
        for name, s in statuses.items()
        if "/connector-MirrorSource" in name or "/task-MirrorSource" in name
        if s.status["state"] == "FAILED" and s.written >= since
    }


def _reachable(target: Target, timeout: float) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient(client_config(target, {"log_level": 0})).list_topics(timeout=timeout)
    except Exception:  # KafkaException on timeout: unreachable is the answer, not an error
        return False
    return True


def _read_compacted(target: Target, topic: str, timeout: float) -> dict[str, bytes | None]:
    """Latest value per key of a (small, compacted) topic; {} when unreachable or absent."""
    return {k: v for k, (v, _) in _read_compacted_stamped(target, topic, timeout).items()}


def _read_compacted_stamped(
    target: Target, topic: str, timeout: float
) -> dict[str, tuple[bytes | None, float]]:
    """Latest value per key of a (small, compacted) topic, with its record's timestamp (epoch
    seconds); {} when unreachable or absent."""
    from shared.kafka_read import records

    latest: dict[str, tuple[bytes | None, float]] = {}
    try:
        for msg in records(
            target,
            topic,
            error=InfraError,
            timeout_s=timeout,
            partial=True,
            missing_ok=True,
            # Connect's own topics: what its workers wrote, in a transaction or not.
            extra={
                "isolation.level": "read_uncommitted",
                "socket.timeout.ms": 3000,
                "log_level": 0,
            },
        ):
            key = msg.key()
            if key is not None:
                latest[key.decode(errors="replace")] = (msg.value(), msg.timestamp()[1] / 1000.0)
    except Exception:  # an unreachable cluster reads as "no status", never as a crash
        return {}
    return latest
