"""The real brokers: both Kafka clusters and Mosquitto with auth, through `fleetsentry infra`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from paho.mqtt.enums import CallbackAPIVersion

from edge import disk
from edge.config import EdgeConfig
from shared import topics
from shared.infra.errors import PortInUseError, PrerequisiteError
from shared.infra.stack import Stack
from shared.kafka_config import ADMIN_USER as KAFKA_ADMIN_USER
from shared.kafka_config import KafkaSettings, client_config
from tests.conftest import MqttBroker
from tests.support import consume_all, free_infra_settings, produce_all

pytestmark = pytest.mark.integration
# The cloud as `infra up` makes it by default: three nodes (tests/conftest.py: stack).
CLOUD_NODES = 3
VIN_A = "1HGCM82633A004352"
VIN_B = "2FTRX18W1XCA12345"


def test_edge_cluster_round_trip_with_idempotent_producer(edge_kafka: KafkaSettings) -> None:
    topic = topics.RAW_TELEMETRY
    marker = uuid.uuid4().hex
    sent = produce_all(
        edge_kafka, topic, [(VIN_A.encode(), f"{marker}-{i}".encode()) for i in range(500)]
    )
    got = [m.value().decode() for m in consume_all(edge_kafka, topic, idle=2)]
    mine = [v for v in got if v.startswith(marker)]
    assert sent == 500 and sorted(mine) == sorted(f"{marker}-{i}" for i in range(500))


def test_registry_topics_exist_with_their_settings(edge_kafka: KafkaSettings) -> None:
    admin = AdminClient(client_config(edge_kafka))
    meta = admin.list_topics(timeout=10)
    for t in topics.registry("edge"):
        assert t.name in meta.topics, t.name
        assert len(meta.topics[t.name].partitions) == t.partitions
    res = ConfigResource(ConfigResource.Type.TOPIC, topics.CLOUD_MODELS)
    conf = admin.describe_configs([res])[res].result()
    # Compacted, and cut by size: invented keys cannot fill the gateway's disk.
    assert conf["cleanup.policy"].value == "compact,delete"
    # `infra up` bounds them by the disk plan (no --edge-config: the defaults' 20 GiB budget).
    bounds = disk.plan(EdgeConfig())
    for name in (topics.RAW_TELEMETRY, topics.ENRICHER_STATE, topics.CLOUD_MODELS):
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        conf = admin.describe_configs([res])[res].result()
        for key, value in bounds.topic(name).configs().items():
            assert conf[key].value == value, (name, key)


def test_cloud_cluster_has_three_brokers_and_replicates(cloud_kafka: KafkaSettings) -> None:
    admin = AdminClient(client_config(cloud_kafka))
    meta = admin.list_topics(timeout=10)
    assert len(meta.brokers) == 3
    labels = meta.topics[topics.LABELS]
    for part in labels.partitions.values():
        assert len(part.replicas) == 3 and len(part.isrs) == 3
    res = ConfigResource(ConfigResource.Type.TOPIC, topics.LABELS)
    assert admin.describe_configs([res])[res].result()["min.insync.replicas"].value == "2"
    marker = uuid.uuid4().hex
    produce_all(cloud_kafka, topics.LABELS, [(None, f"{marker}-{i}".encode()) for i in range(200)])
    got = [m.value().decode() for m in consume_all(cloud_kafka, topics.LABELS, idle=2)]
    assert len([v for v in got if v.startswith(marker)]) == 200


def test_kcat_lists_brokers(stack: Stack, cloud_kafka: KafkaSettings) -> None:
    for name, count in (("edge_kafka", 1), ("cloud_kafka", 3)):
        # The node's PLAIN login: Debian's kcat 1.7.1 (librdkafka 2.0.2) fails SCRAM-SHA-512
        # with Kafka 4.3 ("invalid credentials") where librdkafka 2.16 succeeds.
        cluster = stack.edge if name == "edge_kafka" else stack.cloud
        login = cluster.login(KAFKA_ADMIN_USER)
        conf = client_config(login)
        options = [
            arg for k, v in conf.items() if k != "bootstrap.servers" for arg in ("-X", f"{k}={v}")
        ]
        run = subprocess.run(
            ["kcat", "-L", "-J", "-b", conf["bootstrap.servers"], *options],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert len(json.loads(run.stdout)["brokers"]) == count


def _client(broker: MqttBroker, user: str, password: str, cid: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    return c


def test_mqtt_qos1_round_trip_with_auth_and_acl(mqtt_broker: MqttBroker) -> None:
    mqtt_broker.register_vehicles([VIN_A, VIN_B], "vehicle-pass")
    got: list[tuple[str, bytes | bytearray]] = []
    subscribed = threading.Event()
    done = threading.Event()
    sub = _client(mqtt_broker, *mqtt_broker.admin, cid="test-sub")
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got.append((msg.topic, msg.payload))
        if msg.payload == b"last":
            done.set()

    sub.on_message = on_message
    sub.connect(mqtt_broker.host, mqtt_broker.port)
    sub.subscribe("fleet/#", qos=1)
    sub.loop_start()
    assert subscribed.wait(10)

    acks: dict[int, int] = {}
    veh = _client(mqtt_broker, VIN_A, "vehicle-pass", cid=VIN_A)
    veh.on_publish = lambda c, u, mid, rc, props: acks.__setitem__(mid, rc.value)
    veh.connect(mqtt_broker.host, mqtt_broker.port)
    veh.loop_start()
    own = veh.publish(f"fleet/{VIN_A}/telemetry", b"mine", qos=1)
    other = veh.publish(f"fleet/{VIN_B}/telemetry", b"spoofed", qos=1)
    own.wait_for_publish(10)
    other.wait_for_publish(10)
    veh.publish(f"fleet/{VIN_A}/telemetry", b"last", qos=1).wait_for_publish(10)
    assert done.wait(10)
    veh.loop_stop()
    sub.loop_stop()
    veh.disconnect()
    sub.disconnect()
    topics_seen = [t for t, _ in got]
    assert (f"fleet/{VIN_A}/telemetry", b"mine") in got
    assert f"fleet/{VIN_B}/telemetry" not in topics_seen, "a vehicle published as another"
    # MQTT 5: the broker answers the spoofed publish with 135 (not authorized).
    assert acks[own.mid] == 0 and acks[other.mid] == 135


def test_wrong_password_is_refused(mqtt_broker: MqttBroker) -> None:
    c = _client(mqtt_broker, mqtt_broker.admin[0], "wrong", cid="intruder")
    result: dict[str, int] = {}
    ev = threading.Event()

    def on_connect(client: mqtt.Client, u: object, flags: object, rc: object, p: object) -> None:
        result["rc"] = rc.value  # type: ignore[attr-defined]
        ev.set()

    c.on_connect = on_connect
    c.connect(mqtt_broker.host, mqtt_broker.port)
    c.loop_start()
    assert ev.wait(10)
    c.loop_stop()
    assert result["rc"] in (134, 135)  # bad user name or password / not authorized


def test_mosquitto_cli_round_trip(mqtt_broker: MqttBroker) -> None:
    user, pw = mqtt_broker.admin
    base = ["-h", mqtt_broker.host, "-p", str(mqtt_broker.port), "-u", user, "-P", pw]
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            *base,
            "-t",
            "fleet/cli/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "15",
            "-V",
            "mqttv5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    import time

    time.sleep(0.7)
    subprocess.run(
        ["mosquitto_pub", *base, "-t", "fleet/cli/x", "-q", "1", "-m", "hello"],
        check=True,
        timeout=15,
    )
    out, _ = sub.communicate(timeout=20)
    assert out.strip() == "hello"
    bad = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            mqtt_broker.host,
            "-p",
            str(mqtt_broker.port),
            "-u",
            "nobody",
            "-P",
            "x",
            "-t",
            "fleet/cli/x",
            "-m",
            "no",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert bad.returncode != 0 and "not authorised" in (bad.stdout + bad.stderr).lower()


def test_up_is_idempotent_and_data_survives_down_up(tmp_path: Path) -> None:
    """A private stack (edge + mqtt only): up twice is a no-op, down leaves no process,
    data written before down is there after up."""
    s = Stack(free_infra_settings(tmp_path / "home"), quiet=True)
    services = frozenset({"edge", "mqtt"})
    try:
        s.up(services=services)
        pids = s.status()["edge_kafka"]["pids"] + s.status()["mosquitto"]["pids"]
        s.up(services=services)
        again = s.status()["edge_kafka"]["pids"] + s.status()["mosquitto"]["pids"]
        assert pids == again and len(pids) == 2
        marker = uuid.uuid4().hex
        produce_all(s.edge.login(), topics.ALERTS, [(None, marker.encode())])
        s.down()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"pid {pid} survived"
        assert s.status()["edge_kafka"]["healthy"] is False
        s.up(services=services)
        got = [m.value().decode() for m in consume_all(s.edge.login(), topics.ALERTS, expect=1)]
        assert got == [marker]
    finally:
        s.down()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_taken_port_is_named(tmp_path: Path) -> None:
    settings = free_infra_settings(tmp_path / "home")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.mqtt_port))
        blocker.listen()
        with pytest.raises(PortInUseError) as err:
            Stack(settings, quiet=True).up(services=frozenset({"mqtt"}))
    assert "mqtt_port" in str(err.value) and str(settings.mqtt_port) in str(err.value)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_missing_prerequisites_give_one_clear_message(tmp_path: Path) -> None:
    bare = {
        "PATH": str(tmp_path / "empty-bin"),
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": os.getcwd(),
    }
    r = _cli(["infra", "up", "--home", str(tmp_path / "h")], bare)
    assert r.returncode != 0
    assert "Java was not found" in r.stderr and "apt-get install" in r.stderr
    assert "Traceback" not in r.stderr

    # Java present, Maven missing and no cached jars.
    java_dir = Path(
        subprocess.check_output(
            ["bash", "-c", "dirname $(readlink -f $(which java))"], text=True
        ).strip()
    )
    env = dict(bare, PATH=str(java_dir))
    r = _cli(["infra", "up", "--home", str(tmp_path / "h")], env)
    assert r.returncode != 0 and "Maven (mvn) was not found" in r.stderr, r.stderr

    # Java and Maven present, mosquitto missing (Debian puts it in /usr/sbin: hide that too).
    from shared.infra import mosquitto

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(java_dir))
        mp.setattr(mosquitto, "SYSTEM_PATHS", ())
        with pytest.raises(PrerequisiteError, match="apt-get install mosquitto"):
            Stack(free_infra_settings(tmp_path / "m"), quiet=True).up(services=frozenset({"mqtt"}))


def test_status_json_reports_addresses_and_health(stack: Stack) -> None:
    env = dict(os.environ)
    s = stack.settings
    r = _cli(
        [
            "infra",
            "status",
            "--json",
            "--home",
            str(s.home),
            "--edge-port",
            str(s.edge_port),
            "--edge-controller-port",
            str(s.edge_controller_port),
            "--cloud-ports",
            ",".join(map(str, s.cloud_ports)),
            "--cloud-controller-ports",
            ",".join(map(str, s.cloud_controller_ports)),
            "--mqtt-port",
            str(s.mqtt_port),
        ],
        env,
    )
    status = json.loads(r.stdout)
    assert status["edge_kafka"]["bootstrap"] == stack.edge.bootstrap
    assert status["edge_kafka"]["healthy"] is True and status["edge_kafka"]["brokers"] == 1
    assert status["mosquitto"]["address"] == f"127.0.0.1:{s.mqtt_port}"
    assert status["mosquitto"]["healthy"] is True
