"""A Kafka cluster in KRaft mode: every node a combined broker and controller.

The edge runs one node; the cloud runs three on one machine (replication factor 3,
``min.insync.replicas=2``). Each node has its own data and log directories under the
cluster's home, so data survives ``down`` then ``up``.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import kafka_config, topics
from shared.infra import jars, process
from shared.infra.errors import InfraError, ServiceStartError
from shared.infra.files import write_private
from shared.infra.tls import TlsFiles, certificate_fresh, make_local_ca
from shared.kafka_config import ADMIN_USER, SCRAM_USERS, KafkaSettings

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"

_LOG4J2_HEAD = """\
Configuration:
  status: warn
  Appenders:
    RollingFile:
      name: file
      fileName: "{log_dir}/{name}.log"
      filePattern: "{log_dir}/{name}.log.%i"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
      Policies:
        SizeBasedTriggeringPolicy:
          size: 20 MB
      DefaultRolloverStrategy:
        max: 3
  Loggers:
    Root:
      level: {root}
      AppenderRef:
        - ref: file
    Logger:
"""


def log4j2_yaml(log_dir: Path, name: str, root: str, loggers: dict[str, str]) -> str:
    """A log4j2 config writing ``<log_dir>/<name>.log`` (rolled at 20 MB, 3 kept)."""
    head = _LOG4J2_HEAD.format(log_dir=log_dir, name=name, root=root)
    return head + "".join(
        f"      - name: {logger}\n        level: {level}\n" for logger, level in loggers.items()
    )


# The brokers' record-batch limit: a model bundle (the biggest record there is) and overhead.
MESSAGE_MAX_BYTES = topics.MODEL_MESSAGE_BYTES + 64 * 1024
KAFKA_LOGGERS = {"kafka": "WARN", "org.apache.kafka": "WARN"}


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class KafkaCluster:
    """One cluster's layout. Constructing it does no I/O; ``start`` does."""

    name: str
    home: Path
    nodes: tuple[KafkaNode, ...]
    host: str = "127.0.0.1"
    heap: str = "512m"
    # SASL on both listeners (both of ours; off: PLAINTEXT, for a development cluster).
    authenticate: bool = False
    # TLS on both listeners too (the cloud's, reached over the network), with a certificate
    # for `tls_hosts` signed by a CA of the cluster's own (``<home>/tls``, see ensure_tls).
    tls: bool = False
    tls_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    # The KRaft authorizer: a login may do only what an ACL allows (shared/infra/acls.py);
    # the node's own admin login is the one super user.
    authorize: bool = False
    # The SCRAM users `infra up` makes (the node's admin is a PLAIN user besides).
    users: tuple[str, ...] = SCRAM_USERS

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.nodes))

    @property
    def min_insync(self) -> int:
        return 2 if self.replication_factor >= 3 else 1

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    def node_dir(self, node: KafkaNode) -> Path:
        return self.home / f"node-{node.node_id}"

    def config_path(self, node: KafkaNode) -> Path:
        return self.node_dir(node) / "server.properties"

    def pid_file(self, node: KafkaNode) -> Path:
        return self.node_dir(node) / "kafka.pid"

    def log_dir(self, node: KafkaNode) -> Path:
        return self.node_dir(node) / "logs"

    def topic_bytes(self, topic: str) -> int:
        """Bytes of ``topic``'s log segments on disk, summed over every node and replica."""
        return sum(
            seg.stat().st_size
            for node in self.nodes
            for part in (self.node_dir(node) / "data").glob(f"{topic}-*")
            if part.name.rsplit("-", 1)[1].isdigit()
            for seg in part.glob("*.log")
        )

    @property
    def credentials_path(self) -> Path:
        return self.home / "credentials.json"

    def credentials(self, extra: tuple[str, ...] = ()) -> dict[str, str]:
        """user -> password of the admin, the service users and ``extra`` ones (made on first
        use, kept 0600)."""
        creds = (
            kafka_config.read_credentials(self.credentials_path)
            if self.credentials_path.exists()
            else {}
        )
        missing = [u for u in (ADMIN_USER, *self.users, *extra) if u not in creds]
        if missing:
            creds.update({u: secrets.token_urlsafe(24) for u in missing})
            write_private(self.credentials_path, json.dumps(creds, indent=2) + "\n")
        return creds

    def login(self, user: str = kafka_config.EDGE_USER) -> KafkaSettings | str:
        """How a client of ``user`` connects (the bare bootstrap when there is no auth)."""
        if not self.authenticate:
            return self.bootstrap
        return KafkaSettings(
            bootstrap=self.bootstrap,
            username=user,
            credentials_file=self.credentials_path,
            mechanism="PLAIN" if user == ADMIN_USER else "SCRAM-SHA-512",
            ca_file=self.tls_files.ca_file if self.tls else None,
        )

    @property
    def tls_files(self) -> TlsFiles:
        d = self.home / "tls"
        return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")

    def ensure_tls(self) -> TlsFiles:
        """The cluster's CA and server certificate: made on first start, and again when the
        certificate expires within a day or no longer names every host in `tls_hosts`."""
        files = self.tls_files
        if not certificate_fresh(files.cert_file, self.tls_hosts, min_days=1):
            make_local_ca(files.ca_file.parent, self.tls_hosts, name=f"fleetsentry {self.name}")
        return files

    def ports(self) -> list[tuple[str, int]]:
        """(setting, port) pairs, for port checks that name the setting."""
        out = []
        for i, node in enumerate(self.nodes):
            out.append(
                (
                    f"{self.name}_port" if len(self.nodes) == 1 else f"{self.name}_ports[{i}]",
                    node.port,
                )
            )
            out.append(
                (
                    f"{self.name}_controller_port"
                    if len(self.nodes) == 1
                    else f"{self.name}_controller_ports[{i}]",
                    node.controller_port,
                )
            )
        return out

    # --- configuration ------------------------------------------------------------------

    def properties(self, node: KafkaNode) -> str:
        rf, isr = self.replication_factor, self.min_insync
        voters = ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.nodes)
        conf = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"{self._listener}://{self.host}:{node.port},"
            f"CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": f"{self._listener}://{self.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": self._listener,
            "listener.security.protocol.map": f"{self._listener}:{self._listener},"
            f"CONTROLLER:{self._listener}",
            **self._sasl(),
            **self._tls(),
            **self._authorizer(),
            "log.dirs": self.node_dir(node) / "data",
            "num.partitions": 3,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "transaction.state.log.num.partitions": 10,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            # A gateway has little memory: the cleaner's dedupe buffer defaults to 128 MB.
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 2,
            "log.segment.bytes": 64 * 1024 * 1024,
            # Topics are bounded by retention.bytes too (the gateway's disk plan, edge/disk.py).
            # Checked every 10 s rather than 5 min, since a partition grows past its bound
            # until the next check; a deleted segment's file goes 5 s later, not 60.
            "log.retention.check.interval.ms": 10_000,
            "log.segment.delete.delay.ms": 5_000,
            # No record bigger than a model bundle on any topic (topics.MODEL_MESSAGE_BYTES,
            # plus a batch's overhead).
            "message.max.bytes": MESSAGE_MAX_BYTES,
            "replica.fetch.max.bytes": MESSAGE_MAX_BYTES,
            # `infra down` stops every node at once: a controlled shutdown would wait for a
            # controller quorum that is leaving too, and be killed after the stop timeout.
            # Logs are still flushed and closed cleanly on SIGTERM.
            "controlled.shutdown.enable": "false",
        }
        return "".join(f"{k}={v}\n" for k, v in conf.items())

    @property
    def _listener(self) -> str:
        if self.tls:
            return "SASL_SSL" if self.authenticate else "SSL"
        return "SASL_PLAINTEXT" if self.authenticate else "PLAINTEXT"

    def _tls(self) -> dict[str, str]:
        """PEM key and certificate inline (a PEM key *file* would need a key password), the
        CA as the truststore, for both listeners and between the nodes."""
        if not self.tls:
            return {}
        files = self.tls_files
        inline = {
            "ssl.keystore.key": files.key_file,
            "ssl.keystore.certificate.chain": files.cert_file,
        }
        return {
            "ssl.keystore.type": "PEM",
            **{k: _escaped(path.read_text()) for k, path in inline.items()},
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(files.ca_file),
            "ssl.client.auth": "none",
            "ssl.endpoint.identification.algorithm": "https",
        }

    def _authorizer(self) -> dict[str, str]:
        if not self.authorize:
            return {}
        return {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _sasl(self) -> dict[str, str]:
        """Clients log in with SCRAM (users kept in the cluster's metadata). The node itself
        is a static PLAIN user, on the client listener (between brokers, and to provision
        the SCRAM users) and as the only login the controller listener accepts: it exists
        from the first start on, needing nothing from the metadata log."""
        if not self.authenticate:
            return {}
        admin = self.credentials()[ADMIN_USER]
        plain = (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required "
            f"username={json.dumps(ADMIN_USER)} password={json.dumps(admin)} "
            f"user_{ADMIN_USER}={json.dumps(admin)};"
        )
        listener = self._listener.lower()
        return {
            f"listener.name.{listener}.sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
            f"listener.name.{listener}.plain.sasl.jaas.config": plain,
            f"listener.name.{listener}.scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "sasl.mechanism.controller.protocol": "PLAIN",
        }

    def stale_nodes(self) -> list[int]:
        """Running nodes whose written configuration differs from what they would get now
        (they go on with the old one until restarted)."""
        running = self.running_pids()
        return [
            n.node_id
            for n in self.nodes
            if n.node_id in running
            and self.config_path(n).exists()
            and self.config_path(n).read_text() != self.properties(n)
        ]

    def _write_configs(self) -> None:
        for node in self.nodes:
            self.node_dir(node).mkdir(parents=True, exist_ok=True)
            self.log_dir(node).mkdir(parents=True, exist_ok=True)
            # It may hold the node's password: readable by its owner only.
            write_private(self.config_path(node), self.properties(node))
            (self.node_dir(node) / "log4j2.yaml").write_text(
                log4j2_yaml(self.log_dir(node), "server", "INFO", KAFKA_LOGGERS)
            )

    def cluster_id(self) -> str:
        path = self.home / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(cid + "\n")
        return cid

    # --- lifecycle ----------------------------------------------------------------------

    def running_pids(self) -> dict[int, int]:
        """node_id -> pid for nodes whose process is alive."""
        out = {}
        for node in self.nodes:
            pid = process.read_pid(self.pid_file(node), str(self.config_path(node)))
            if pid is not None:
                out[node.node_id] = pid
        return out

    def start(self, libs: Path, java: str) -> list[int]:
        """Format (first time only) and start every node not already running."""
        if self.tls:
            self.ensure_tls()
        stale = self.stale_nodes()
        if stale:
            raise InfraError(
                f"{self.name} Kafka node(s) {stale} run with an older configuration (e.g. "
                f"without authentication): run `fleetsentry infra down`, then `up` again "
                f"(topics and data stay)"
            )
        self._write_configs()
        cid = self.cluster_id()
        running = self.running_pids()
        fresh = [
            n
            for n in self.nodes
            if n.node_id not in running
            and not (self.node_dir(n) / "data" / "meta.properties").exists()
        ]
        # Each format is a JVM of its own: side by side, the cloud's three cost one start-up.
        with ThreadPoolExecutor(max(1, len(fresh))) as pool:
            for fut in [pool.submit(self._format, n, libs, java, cid) for n in fresh]:
                fut.result()
        started = []
        for node in self.nodes:
            if node.node_id in running:
                continue
            started.append(
                process.spawn(
                    self._argv(node, libs, java),
                    self.pid_file(node),
                    self.log_dir(node) / "stdout.log",
                )
            )
        return started

    def _jvm_opts(self, node: KafkaNode, libs: Path, java: str) -> list[str]:
        return [
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:MaxDirectMemorySize=256m",
            "-Djava.awt.headless=true",
            *jars.class_data_sharing(self._archive(node), libs, java, MAIN_CLASS),
            f"-Dlog4j2.configurationFile={self.node_dir(node) / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.log_dir(node)}",
            *jars.extra_jvm_opts(),
        ]

    def _archive(self, node: KafkaNode) -> Path:
        return self.node_dir(node) / "kafka-classes.jsa"

    def _argv(self, node: KafkaNode, libs: Path, java: str) -> list[str]:
        return [
            java,
            *self._jvm_opts(node, libs, java),
            "-cp",
            jars.classpath(libs),
            MAIN_CLASS,
            str(self.config_path(node)),
        ]

    def _format(self, node: KafkaNode, libs: Path, java: str, cid: str) -> None:
        with jars.tool_class_data_sharing(libs, java, STORAGE_TOOL) as cds:
            argv = [
                java,
                "-Xmx256m",
                "-XX:TieredStopAtLevel=1",
                *cds,
                *jars.extra_jvm_opts(),
                f"-Dlog4j2.configurationFile={self.node_dir(node) / 'log4j2.yaml'}",
                "-cp",
                jars.classpath(libs),
                STORAGE_TOOL,
                "format",
                f"--cluster-id={cid}",
                "-c",
                str(self.config_path(node)),
                "--ignore-formatted",
            ]
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ServiceStartError(
                    f"formatting {self.name} Kafka node {node.node_id} failed:\n"
                    f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
                )

    def stop(self, timeout: float = 30.0) -> list[int]:
        pids = list(self.running_pids().values())
        killed = process.stop(pids, timeout)
        if pids and not killed:  # each node exited whole: its class archive too
            archives = [self._archive(n) for n in self.nodes if self._archive(n).exists()]
            jars.share_archives(archives, MAIN_CLASS)
        return killed

    def check_exited(self) -> None:
        """Raise if a node we started has died (e.g. a port taken between check and bind)."""
        running = self.running_pids()
        for node in self.nodes:
            if node.node_id not in running:
                log = self.log_dir(node) / "stdout.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise ServiceStartError(
                    f"{self.name} Kafka node {node.node_id} exited during start-up; "
                    f"see {log}\n{tail}"
                )

    def broker_count(self, timeout: float = 3.0) -> int:
        """Brokers the cluster reports in its metadata (0 when unreachable)."""
        from confluent_kafka.admin import AdminClient

        conf = kafka_config.client_config(
            self.login(ADMIN_USER),
            {"socket.timeout.ms": 2000, "log_level": 0, "logger": _SilentLogger()},
        )
        admin = AdminClient(conf)
        try:
            meta = admin.list_topics(timeout=timeout)
        except Exception:
            return 0
        return len(meta.brokers)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_exited()
            if self.broker_count() == len(self.nodes):
                return
            time.sleep(0.3)
        raise ServiceStartError(
            f"{self.name} Kafka did not report {len(self.nodes)} broker(s) within {timeout:.0f}s; "
            f"see logs under {self.home}"
        )


def _escaped(pem: str) -> str:
    """A multi-line value for a Java properties file (its loader turns ``\\n`` into a newline)."""
    return pem.strip().replace("\n", "\\n")


class _SilentLogger:
    """librdkafka logs connection refusals loudly while a broker boots; we poll instead."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return self.log
