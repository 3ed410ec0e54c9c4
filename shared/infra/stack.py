"""The whole local stack: edge Kafka (1 node), cloud Kafka (3 nodes) and Mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from shared.infra import jars, ports
from shared.infra.acls import ensure_acls, gateway_acls, service_grants
from shared.infra.errors import InfraError, PortInUseError
from shared.infra.kafka import KafkaCluster, KafkaNode
from shared.infra.mirror import Mirror, validate_alias
from shared.infra.mosquitto import ADMIN_USER, BRIDGE_USER, Mosquitto
from shared.infra.topics_admin import ensure_topics, ensure_users
from shared.kafka_config import ADMIN_USER as KAFKA_ADMIN_USER
from shared.kafka_config import CLOUD_USERS, MIRROR_USER, KafkaSettings, gateway_user
from shared.paths import default_home

SERVICES = frozenset({"edge", "cloud", "mqtt"})
LOOPBACK = "127.0.0.1"
Port = Annotated[int, Meta(ge=1, le=65535)]


class InfraSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the brokers listen and keep their data. Defaults work on one machine."""

    home: Path = msgspec.field(default_factory=default_home)
    # Where Mosquitto and the cloud Kafka listen; the edge Kafka always listens on loopback.
    host: str = "127.0.0.1"
    edge_port: Port = 9092
    edge_controller_port: Port = 9093
    # One port per cloud Kafka node: three (replication factor 3, min.insync.replicas 2), or
    # one for a trial on a single machine (replication factor 1). Not two (see __post_init__).
    cloud_ports: Annotated[list[Port], Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: [9192, 9194, 9196]
    )
    # The cloud nodes' controller ports, as many as cloud_ports.
    cloud_controller_ports: Annotated[list[Port], Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: [9193, 9195, 9197]
    )
    mqtt_port: Port = 1883
    kafka_heap: Annotated[str, Meta(pattern=r"^\d+[mg]$")] = "512m"
    # The gateway's edge.toml: its [disk] budget bounds the edge topics (edge/disk.py). Without
    # it, the defaults' plan (a 20 GiB budget).
    edge_config: Path | None = None

    def __post_init__(self) -> None:
        if len(self.cloud_ports) == 2:
            from shared.errors import ConfigError

            raise ConfigError(
                "2 cloud nodes: give one or three. Two controllers make a quorum that stops "
                "when either fails, so two nodes tolerate no failure",
                setting="cloud_ports",
            )
        if len(self.cloud_controller_ports) != len(self.cloud_ports):
            from shared.errors import ConfigError

            raise ConfigError(
                f"{len(self.cloud_controller_ports)} controller ports for "
                f"{len(self.cloud_ports)} cloud nodes: give one per port in cloud_ports",
                setting="cloud_controller_ports",
            )
        used: dict[int, str] = {}
        for setting, port in self.port_settings():
            if port in used:
                from shared.errors import ConfigError

                raise ConfigError(f"port {port} is also given to {used[port]}", setting=setting)
            used[port] = setting

    def port_settings(self) -> list[tuple[str, int]]:
        out = [
            ("edge_port", self.edge_port),
            ("edge_controller_port", self.edge_controller_port),
            ("mqtt_port", self.mqtt_port),
        ]
        out += [(f"cloud_ports[{i}]", p) for i, p in enumerate(self.cloud_ports)]
        out += [
            (f"cloud_controller_ports[{i}]", p) for i, p in enumerate(self.cloud_controller_ports)
        ]
        return out


class Stack:
    """Brings the three services up and down. Constructing it does no I/O."""

    def __init__(self, settings: InfraSettings, quiet: bool = False) -> None:
        self.settings = settings
        self.quiet = quiet
        home = settings.home
        # The gateway's Kafka holds PII and serves only the gateway's own services: it
        # listens on loopback whatever `host` says, and asks for a login.
        self.edge = KafkaCluster(
            "edge",
            home / "edge-kafka",
            (KafkaNode(1, settings.edge_port, settings.edge_controller_port),),
            host=LOOPBACK,
            heap=settings.kafka_heap,
            authenticate=True,
        )
        self.cloud = KafkaCluster(
            "cloud",
            home / "cloud-kafka",
            tuple(
                KafkaNode(i + 1, p, c)
                for i, (p, c) in enumerate(
                    zip(settings.cloud_ports, settings.cloud_controller_ports, strict=True)
                )
            ),
            host=settings.host,
            heap=settings.kafka_heap,
            authenticate=True,
            tls=True,
            authorize=True,
            users=CLOUD_USERS,
            tls_hosts=tuple(dict.fromkeys((settings.host, LOOPBACK, "localhost"))),
        )
        self.mqtt = Mosquitto(home / "mosquitto", settings.mqtt_port, settings.host)

    def mirror(
        self,
        edge_id: str,
        edge_bootstrap: str | None = None,
        provision: bool = True,
        gateway: Stack | None = None,
        home: Path | None = None,
    ) -> Mirror:
        """The MirrorMaker 2 of gateway ``edge_id``, logging in to this stack's cloud as the
        gateway; ``provision``: make that login and its ACLs first (the cloud must be up).

        It reads the edge Kafka of ``gateway`` (a stack of its own, e.g. a second gateway's;
        default this one), at ``edge_bootstrap`` when given, and keeps its files under
        ``home`` (default this stack's home)."""
        gateway = gateway or self
        gateway.use_declarations()  # the declared streams' topics are mirrored too
        edge = gateway.edge.login(MIRROR_USER)
        if edge_bootstrap:
            edge = (
                edge_bootstrap
                if isinstance(edge, str)
                else msgspec.structs.replace(edge, bootstrap=edge_bootstrap)
            )
        return Mirror(
            edge_id,
            edge_bootstrap or gateway.edge.bootstrap,
            self.cloud.bootstrap,
            home or self.settings.home,
            edge_login=edge,
            cloud_login=self.add_gateway(edge_id) if provision else self._gateway_login(edge_id),
            cloud_replication_factor=self.cloud.replication_factor,
        )

    def _gateway_login(self, edge_id: str) -> KafkaSettings | str:
        return self.cloud.login(gateway_user(edge_id))

    def add_gateway(self, edge_id: str) -> KafkaSettings | str:
        """Gateway ``edge_id``'s own cloud login and ACLs (kept in the cloud's credentials
        file); idempotent. The cloud must be up."""
        if not self.cloud.authenticate:
            return self.cloud.bootstrap
        user = gateway_user(validate_alias(edge_id))
        creds = self.cloud.credentials(extra=(user,))
        admin = self.cloud.login(KAFKA_ADMIN_USER)
        ensure_users(admin, {user: creds[user]})
        if self.cloud.authorize:
            ensure_acls(admin, gateway_acls(edge_id))
        return self._gateway_login(edge_id)

    def use_declarations(self) -> None:
        """Register the streams declared in the gateway's edge.toml ``[streams] dir`` (when
        ``edge_config`` names one), so their topics are created and mirrored like the
        built-in ones. Read as TOML: shared code never imports the gateway's config."""
        if self.settings.edge_config is None:
            return
        import tomllib

        try:
            table = tomllib.loads(self.settings.edge_config.read_text()).get("streams", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InfraError(f"cannot read {self.settings.edge_config}: {exc}") from None
        if table.get("dir"):
            from shared import streams

            streams.use_declarations(Path(table["dir"]).expanduser())

    def edge_topic_configs(self) -> dict[str, dict[str, str]]:
        """The disk plan's configs for the edge topics (retention.bytes, segment sizes, ...),
        as the gateway's own `fleetsentry edge disk-plan --json` works them out from edge.toml
        (the plan belongs to the gateway; shared code runs its command, never imports it)."""
        argv = [sys.executable, "-m", "edge.cli", "disk-plan", "--json"]
        if self.settings.edge_config is not None:
            argv += ["--config", str(self.settings.edge_config)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise InfraError(f"the gateway's disk plan failed: {proc.stderr.strip()[-2000:]}")
        configs: dict[str, dict[str, str]] = json.loads(proc.stdout)
        return configs

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def _check_ports(self, services: frozenset[str]) -> None:
        mine = {
            self.edge.name: self.edge.running_pids(),
            self.cloud.name: self.cloud.running_pids(),
        }
        mqtt_running = self.mqtt.pid() is not None
        for setting, port in self.settings.port_settings():
            if setting.split("_")[0] not in services:
                continue
            if setting.startswith("mqtt") and mqtt_running:
                continue
            cluster = self.edge if setting.startswith("edge") else self.cloud
            if not setting.startswith("mqtt") and _port_node(cluster, port) in mine[cluster.name]:
                continue
            host = self.settings.host if setting.startswith("mqtt") else cluster.host
            if not ports.is_free(host, port):
                raise PortInUseError(setting, host, port)

    def up(self, timeout: float = 120.0, services: frozenset[str] = SERVICES) -> dict[str, Any]:
        """Start whatever is not running, wait until healthy, create topics. Idempotent.

        ``services`` picks a subset of ``{"edge", "cloud", "mqtt"}`` (tests that need only
        the gateway's side start one JVM instead of four).
        """
        unknown = services - SERVICES
        if unknown:
            raise InfraError(f"unknown service(s) {sorted(unknown)}; known: {sorted(SERVICES)}")
        self.use_declarations()
        clusters = [c for c in (self.edge, self.cloud) if c.name in services]
        if clusters:
            java = jars.java_binary()
            libs = jars.kafka_libs(quiet=self.quiet)
        if "mqtt" in services:
            from shared.infra.mosquitto import mosquitto_binary

            mosquitto_binary()
        self._check_ports(services)
        started = time.monotonic()
        new = [pid for c in clusters for pid in c.start(libs, java)]
        mqtt_pid = self.mqtt.start() if "mqtt" in services else None
        if new or mqtt_pid:
            self._say(
                f"Starting {len(new)} Kafka node(s){' and mosquitto' if mqtt_pid else ''} ..."
            )
        try:
            with ThreadPoolExecutor(3) as pool:
                waits = [pool.submit(c.wait_healthy, timeout) for c in clusters]
                if "mqtt" in services:
                    waits.append(pool.submit(self.mqtt.wait_healthy, 15.0))
                for fut in waits:
                    fut.result()
            for c in clusters:
                if c.authenticate:
                    creds = c.credentials()
                    ensure_users(c.login(KAFKA_ADMIN_USER), {u: creds[u] for u in c.users})
                if c.authorize:
                    ensure_acls(c.login(KAFKA_ADMIN_USER), service_grants())
                ensure_topics(
                    c.login(KAFKA_ADMIN_USER),
                    c.name,  # type: ignore[arg-type]
                    c.replication_factor,
                    overrides=self.edge_topic_configs() if c is self.edge else None,
                )
        except InfraError:
            if new or mqtt_pid:
                self.down()
            raise
        if new or mqtt_pid:
            self._say(f"Up in {time.monotonic() - started:.1f}s.")
        else:
            self._say("Already up.")
        return self.status()

    def down(self) -> list[int]:
        """Stop all three; returns pids that needed SIGKILL. Data stays on disk."""
        with ThreadPoolExecutor(3) as pool:
            futs = [
                pool.submit(self.mqtt.stop),
                pool.submit(self.edge.stop),
                pool.submit(self.cloud.stop),
            ]
            killed = [pid for fut in futs for pid in fut.result()]
        return killed

    def status(self) -> dict[str, Any]:
        creds = self.mqtt.credentials() if self.mqtt.credentials_path.exists() else {}
        out: dict[str, Any] = {}
        for cluster in (self.edge, self.cloud):
            pids = cluster.running_pids()
            brokers = cluster.broker_count() if pids else 0
            out[f"{cluster.name}_kafka"] = {
                "bootstrap": cluster.bootstrap,
                "nodes": len(cluster.nodes),
                "brokers": brokers,
                "healthy": brokers == len(cluster.nodes),
                "pids": sorted(pids.values()),
                "home": str(cluster.home),
            }
            if cluster.authenticate:
                out[f"{cluster.name}_kafka"]["credentials_file"] = str(cluster.credentials_path)
                out[f"{cluster.name}_kafka"]["users"] = list(cluster.users)
            if cluster.tls:
                out[f"{cluster.name}_kafka"]["ca_file"] = str(cluster.tls_files.ca_file)
        pid = self.mqtt.pid()
        out["mosquitto"] = {
            "address": self.mqtt.address,
            "host": self.mqtt.host,
            "port": self.mqtt.port,
            "healthy": self.mqtt.healthy(),
            "pids": [pid] if pid else [],
            "home": str(self.mqtt.home),
            "admin_user": ADMIN_USER,
            "bridge_user": BRIDGE_USER,
            "credentials_file": str(self.mqtt.credentials_path),
            # Logins and roles of services and vehicles (the dynamic-security plugin's file).
            "logins_file": str(self.mqtt.dynsec_file),
            "config_file": str(self.mqtt.config_path),
            "users": sorted(creds),
        }
        return out


def _port_node(cluster: KafkaCluster, port: int) -> int | None:
    for node in cluster.nodes:
        if port in (node.port, node.controller_port):
            return node.node_id
    return None
