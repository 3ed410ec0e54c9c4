"""The Ansible roles, applied for real: lint, syntax, then two gateways on this machine.

The converge tests install two gateways side by side (connection local, each under its own
root in a tmp dir, on its own free ports), run them through the no-systemd path
(``gateway_service_manager: supervisor``), publish vehicle events over each gateway's TLS
listener and read them back from its ``raw.*`` and ``anon.*`` topics, and from the cloud:
each gateway's MirrorMaker, as the role configured it, replicates to a real cloud Kafka
with TLS, SCRAM and ACLs (one node, ``edge_cloud_replication_factor: 1``), logged in as the
gateway itself. Then they re-run (zero changed tasks on both), run ``--check --diff`` on one
(no change), and upgrade one gateway one version up (only its edge services restart, its
data stays).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from shared.infra import jars
from shared.infra.ports import free_ports
from shared.infra.stack import Stack
from shared.kafka_config import ADMIN_USER as KAFKA_ADMIN_USER
from shared.kafka_config import EDGE_USER, KafkaSettings, client_config, gateway_user
from tests import declared_stream
from tests.support import consume_all, free_infra_settings

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
VEHICLE_PASSWORD = "vehicle-password-1"
GATEWAYS = ("gw-a", "gw-b")
# Long enough for a busy 2-core machine; a hung run still ends.
PLAYBOOK_TIMEOUT_S = 900
# The first converge test also pays for the fixture (two full installs).
pytestmark = pytest.mark.timeout(1800)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _run(
    argv: list[str],
    cwd: Path = ANSIBLE,
    timeout: float = PLAYBOOK_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    if proc.returncode != 0:
        lines = proc.stdout.splitlines()
        # The failed tasks with their messages, then the end of the run.
        fatal = [i for i, line in enumerate(lines) if line.startswith(("fatal:", "failed:"))]
        blocks = ["\n".join(lines[max(0, i - 2) : i + 25]) for i in fatal]
        pytest.fail(
            f"exit {proc.returncode}\n"
            + "\n...\n".join(blocks)
            + f"\n...\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


# --- static checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "example", ["fleet_secret", "development_key", "example_key", "placeholder_password"]
)
def test_the_role_refuses_example_secrets_and_the_development_key(
    example: str, tmp_path: Path
) -> None:
    """The example inventory's values and the key the baselines ship with are public.
    (The converge tests below show the fleet's own values pass the same check.)"""
    values = {
        "edge_fleet_secret": "c2VjcmV0LW9mLXRoaXMtdGVzdC1mbGVldC0zMmJ5dGVz",
        "edge_model_public_key": _public_key_pem(),
        "edge_mqtt_password": "a-real-one",
        "edge_kafka_password": "k",
        "edge_mirror_kafka_password": "m",
    }
    example_vault = yaml.safe_load((ANSIBLE / "inventory/example/vault.example.yml").read_text())
    if example == "fleet_secret":
        values["edge_fleet_secret"] = example_vault["vault_fleet_secret"]
    elif example == "development_key":
        values["edge_model_public_key"] = (REPO / "shared/models/baseline/fleet.pub").read_text()
    elif example == "example_key":
        values["edge_model_public_key"] = example_vault["vault_model_public_key"]
    else:
        values["edge_mqtt_password"] = example_vault["vault_mosquitto_bridge_password"]
    playbook = tmp_path / "edge-only.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": True, "roles": ["edge"]}]))
    (tmp_path / "vars.json").write_text(json.dumps(values))
    refused = _run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "--check",
            "-e",
            f"@{tmp_path / 'vars.json'}",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        timeout=300,
    )
    assert refused.returncode != 0
    assert "Refuse the example secrets" in refused.stdout
    assert "The inventory holds an example value" in refused.stdout, refused.stdout[-3000:]


def test_yamllint_passes() -> None:
    _ok(_run([str(BIN / "yamllint"), "-s", "-c", ".yamllint", "."]))


def test_ansible_lint_production_profile_passes() -> None:
    out = _ok(
        _run(
            [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "site.yml", "roles"]
        )
    )
    assert "fatal" not in out.lower()


def test_syntax_check_passes() -> None:
    _ok(
        _run(
            [
                str(BIN / "ansible-playbook"),
                "--syntax-check",
                "-i",
                "inventory/example/hosts.yml",
                "site.yml",
            ]
        )
    )


# --- two gateways on this machine ----------------------------------------------------------


@dataclass
class Gateway:
    name: str
    root: Path
    ports: dict[str, int]
    events: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    @property
    def kafka(self) -> KafkaSettings:
        """The services' login, with the password the kafka role made on the gateway."""
        return KafkaSettings(
            bootstrap=self.bootstrap,
            username=EDGE_USER,
            credentials_file=self.root / "etc/fleetsentry/kafka/credentials.json",
        )

    @property
    def ctl(self) -> Path:
        return self.root / "opt/fleetsentry/bin/fleetsentry-service"

    def pid(self, service: str) -> int | None:
        proc = subprocess.run(
            [str(self.ctl), "status", service], capture_output=True, text=True, check=False
        )
        match = re.search(r"pid (\d+)", proc.stdout)
        return int(match.group(1)) if proc.returncode == 0 and match else None

    def log_tail(self, service: str) -> str:
        log = self.root / "var/log/fleetsentry" / f"{service}.out"
        return log.read_text(errors="replace")[-3000:] if log.exists() else f"(no {log})"

    def stop(self) -> None:
        if not self.ctl.exists():
            return
        for service in ("mirror", "edge", "mosquitto", "kafka"):
            subprocess.run(
                [str(self.ctl), "stop", service], capture_output=True, timeout=90, check=False
            )


@dataclass
class Fleet:
    inventory: Path
    vault_password_file: Path
    gateways: dict[str, Gateway]
    wheel: Path
    upgrade_wheel: Path
    cloud: Stack

    def playbook(self, *extra: str) -> str:
        return _ok(
            _run(
                [
                    str(BIN / "ansible-playbook"),
                    "-i",
                    str(self.inventory),
                    "--vault-password-file",
                    str(self.vault_password_file),
                    "site.yml",
                    *extra,
                ]
            )
        )


def _recap(output: str) -> dict[str, dict[str, int]]:
    """host -> {"ok": n, "changed": n, "failed": n, ...} from the PLAY RECAP."""
    recap = output.rsplit("PLAY RECAP", 1)[-1]
    out = {}
    for line in recap.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            out[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return out


def _changed_tasks(output: str) -> list[str]:
    names, current = [], ""
    for line in output.splitlines():
        if line.startswith("TASK [") or line.startswith("RUNNING HANDLER ["):
            current = line
        elif line.startswith("changed:"):
            names.append(f"{current} {line}")
    return names


def _build_wheel(dest: Path, version: str | None = None) -> Path:
    """A wheel of the working tree (optionally with another version number)."""
    src = dest / f"src-{version or 'current'}"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "*.egg-info",
            "__pycache__",
            "tests",
            "bench",
            "ansible",
            ".pytest_cache",
            ".mypy_cache",
            ".ruff_cache",
            "artifacts",
            ".fleetsentry",
        ),
    )
    if version:  # the one version source (pyproject.toml reads it from there)
        init = src / "shared" / "__init__.py"
        init.write_text(
            re.sub(
                r'^__version__ = ".*"$',
                f'__version__ = "{version}"',
                init.read_text(),
                count=1,
                flags=re.M,
            )
        )
    env = dict(os.environ, SOURCE_DATE_EPOCH="315532800")
    out = dest / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    shutil.rmtree(src)
    wanted = version or _current_version()
    return next(out.glob(f"fleetsentry-{wanted}-*.whl"))


def _current_version() -> str:
    match = re.search(
        r'^__version__ = "(.*)"$', (REPO / "shared" / "__init__.py").read_text(), re.M
    )
    assert match, "shared/__init__.py names no __version__"
    return match.group(1)


def _events(seed: int) -> list[tuple[str, bytes]]:
    from firmware_sim import Fleet as SimFleet
    from firmware_sim import SimSettings

    fleet = SimFleet(
        SimSettings(
            vehicles=3, duration_s=30, rate_hz=1.0, seed=seed, start_ts=None, payment_rate=20.0
        )
    )
    return list(fleet.events())


def _public_key_pem() -> str:
    """A fleet's own model-signing public key (the shipped development key is refused)."""
    from shared.signing import generate_private_key, public_key_pem

    return public_key_pem(generate_private_key()).decode()


def _write_inventory(
    base: Path, gateways: dict[str, Gateway], wheel: Path, wheelhouse: Path, cloud: Stack
) -> tuple[Path, Path]:
    inv_dir = base / "inventory"
    (inv_dir / "group_vars" / "gateways").mkdir(parents=True)
    kafka_home = base / "kafka-home"
    kafka_home.mkdir()
    (kafka_home / "libs").symlink_to(jars.kafka_libs(quiet=True))
    hosts = {}
    for i, gw in enumerate(gateways.values()):
        hosts[gw.name] = {
            "gateway_root": str(gw.root),
            "mosquitto_tls_port": gw.ports["mqtts"],
            "mosquitto_local_port": gw.ports["mqtt"],
            "kafka_port": gw.ports["kafka"],
            "kafka_controller_port": gw.ports["controller"],
            "edge_mirror_rest_port": gw.ports["mirror_rest"],
        }
        # One gateway assembles Kafka with Maven (offline: from the local repository the
        # project's `make jars` filled), the other uses a Kafka distribution (kafka_home).
        if i == 0:
            hosts[gw.name]["kafka_maven_offline"] = True
            # One gateway also runs a stream declared only here (tests/declared_stream.py).
            decl = declared_stream.write_declaration(base / "streams")
            hosts[gw.name]["edge_stream_declarations"] = [str(decl)]
            hosts[gw.name]["mosquitto_stream_topics"] = [declared_stream.STREAM]
        else:
            hosts[gw.name]["kafka_home"] = str(kafka_home)
    inventory = {"all": {"children": {"gateways": {"hosts": hosts}}}}
    (inv_dir / "hosts.yml").write_text(yaml.safe_dump(inventory))
    vins = sorted({t.split("/")[1] for gw in gateways.values() for t, _ in gw.events})
    group_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "gateway_service_manager": "supervisor",
        "gateway_manage_users": False,
        "gateway_manage_packages": False,
        "gateway_group": "root",
        "mosquitto_user": "root",
        "mosquitto_group": "root",
        "kafka_user": "root",
        "kafka_group": "root",
        "edge_user": "root",
        "mosquitto_tls_bind_address": "127.0.0.1",
        "kafka_heap_max": "320m",
        # As the suite's other JVMs (tests/conftest.py): brokers that live minutes.
        "kafka_jvm_extra_options": ["-XX:TieredStopAtLevel=1"],
        "edge_mirror_jvm_extra_options": ["-XX:TieredStopAtLevel=1"],
        "edge_python": sys.executable,
        "edge_package_src": str(wheel),
        "edge_pip_extra_args": ["--no-index", "--find-links", str(wheelhouse)],
        # A built wheel comes with its release's pins (the source tree's, here).
        "edge_constraints_file": str(REPO / "constraints.txt"),
        # Metrics off: their port range is not reserved by the test.
        "edge_metrics_base_port": 0,
        "mosquitto_admin_password": "{{ vault_admin_password }}",
        "mosquitto_bridge_password": "{{ vault_bridge_password }}",
        "mosquitto_vehicles": "{{ vault_vehicles }}",
        "edge_fleet_secret": "{{ vault_fleet_secret }}",
        "edge_model_public_key": "{{ vault_model_public_key }}",
        # The cloud: each gateway its own login (the role's default user, gateway-<edge_id>).
        "edge_cloud_bootstrap": cloud.cloud.bootstrap,
        "edge_cloud_ca_cert": cloud.cloud.tls_files.ca_file.read_text(),
        "edge_cloud_password": "{{ vault_cloud_passwords[edge_id] }}",
        "edge_cloud_replication_factor": cloud.cloud.replication_factor,
    }
    (inv_dir / "group_vars" / "gateways" / "main.yml").write_text(yaml.safe_dump(group_vars))
    vault = {
        "vault_admin_password": "admin-password-for-tests",
        "vault_bridge_password": "bridge-password-for-tests",
        "vault_vehicles": [{"vin": vin, "password": VEHICLE_PASSWORD} for vin in vins],
        "vault_fleet_secret": "ZmxlZXRzZW50cnktdGVzdC1mbGVldC1zZWNyZXQtMzI=",
        "vault_model_public_key": _public_key_pem(),
        "vault_cloud_passwords": {
            name: cloud.cloud.credentials()[gateway_user(name)] for name in gateways
        },
    }
    vault_file = inv_dir / "group_vars" / "gateways" / "vault.yml"
    vault_file.write_text(yaml.safe_dump(vault))
    password_file = base / "vault-password"
    password_file.write_text("test-vault-password\n")
    _ok(
        _run(
            [
                str(BIN / "ansible-vault"),
                "encrypt",
                "--vault-password-file",
                str(password_file),
                str(vault_file),
            ]
        )
    )
    assert vault_file.read_text().startswith("$ANSIBLE_VAULT")
    return inv_dir / "hosts.yml", password_file


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    # Not pytest's numbered tmp dirs: a concurrent pytest run may prune those while the
    # gateways still run from them.
    base = Path(tempfile.mkdtemp(prefix="fleetsentry-ansible-"))
    gateways = {}
    # One call for every gateway: the ports one call picks are free again once it returns,
    # so a second call could hand out one of them again (two gateways on one port).
    every = free_ports(5 * len(GATEWAYS))
    for i, name in enumerate(GATEWAYS):
        p = every[5 * i : 5 * i + 5]
        gateways[name] = Gateway(
            name,
            base / name,
            dict(zip(("mqtts", "mqtt", "kafka", "controller", "mirror_rest"), p, strict=True)),
            _events(seed=100 + i),
        )
    wheel = _build_wheel(base)
    upgrade_wheel = _build_wheel(base, version=_current_version() + ".post1")
    wheelhouse = base / "wheelhouse"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "-d",
            str(wheelhouse),
            "-c",
            str(REPO / "constraints.txt"),
            f"{wheel}[edge]",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    cloud = Stack(free_infra_settings(base / "cloud", cloud_nodes=1), quiet=True)
    try:
        cloud.up(services=frozenset({"cloud"}))
        for name in gateways:  # what the operator does before installing a gateway
            cloud.add_gateway(name)
        inventory, password_file = _write_inventory(base, gateways, wheel, wheelhouse, cloud)
        yield Fleet(inventory, password_file, gateways, wheel, upgrade_wheel, cloud)
    finally:
        for gw in gateways.values():
            gw.stop()
        cloud.down()
        if os.environ.get("FLEETSENTRY_KEEP_TMP"):
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def converged(fleet: Fleet) -> str:
    return fleet.playbook()


def _vehicle(gw: Gateway, vin: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=vin, protocol=mqtt.MQTTv5)
    client.username_pw_set(vin, VEHICLE_PASSWORD)
    # The broker's certificate names localhost and 127.0.0.1: verify it fully.
    client.tls_set(
        ca_certs=str(gw.root / "etc/fleetsentry/mosquitto/tls/ca.crt"), cert_reqs=ssl.CERT_REQUIRED
    )
    client.connect("127.0.0.1", gw.ports["mqtts"])
    client.loop_start()
    return client


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _wait_for_bridge(gw: Gateway, timeout: float = 180.0) -> None:
    """Until the bridge has subscribed, the broker drops what vehicles send (no session
    exists yet on a fresh install). Probe with a malformed message until one reaches
    dlq.ingest: then the bridge is subscribed and its session queues from here on."""
    vin = gw.events[0][0].split("/")[1]
    client = _vehicle(gw, vin)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            client.publish(f"fleet/{vin}/telemetry", b"probe: not an event", qos=1)
            if consume_all(gw.kafka, "dlq.ingest", expect=1, timeout=3):
                return
        pytest.fail(
            f"{gw.name}: the bridge did not subscribe within {timeout:.0f}s\n{gw.log_tail('edge')}"
        )
    finally:
        _close(client)


def _publish(gw: Gateway) -> None:
    """Publish the gateway's events over TLS, one MQTT session per vehicle, QoS 1."""
    by_vin: dict[str, list[tuple[str, bytes]]] = {}
    for topic, payload in gw.events:
        by_vin.setdefault(topic.split("/")[1], []).append((topic, payload))
    for vin, events in by_vin.items():
        client = _vehicle(gw, vin)
        try:
            infos = [client.publish(topic, payload, qos=1) for topic, payload in events]
            for info in infos:
                info.wait_for_publish(timeout=30)
                assert info.is_published(), f"{vin}: publish not acknowledged"
        finally:
            _close(client)


def _event_ids(messages: list) -> set[str]:
    return {json.loads(m.value())["event_id"] for m in messages}


def _published_ids(gw: Gateway, stream: str) -> set[str]:
    return {json.loads(p)["event_id"] for t, p in gw.events if t.endswith("/" + stream)}


@pytest.mark.integration
def test_converge_runs_both_gateways_and_events_reach_raw_and_anon(
    fleet: Fleet, converged: str
) -> None:
    assert set(_recap(converged)) == set(GATEWAYS)
    for gw in fleet.gateways.values():
        for service in ("mosquitto", "kafka", "edge"):
            assert gw.pid(service) is not None, f"{gw.name}: {service} is not running"
    # MirrorMaker exits on purpose when it cannot set itself up in time (its internal topics,
    # on a busy cloud); without systemd, the gateway's keeper starts it again as systemd would.
    first = fleet.gateways[GATEWAYS[0]]
    killed = first.pid("mirror")
    assert killed is not None, f"{first.name}: mirror is not running"
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while first.pid("mirror") in (None, killed) and time.monotonic() < deadline:
        time.sleep(1)
    assert first.pid("mirror") not in (None, killed), (
        f"{first.name}: the killed MirrorMaker was not started again\n{first.log_tail('mirror')}"
    )
    for gw in fleet.gateways.values():
        _wait_for_bridge(gw)
        _publish(gw)
    for gw in fleet.gateways.values():
        for stream in ("telemetry", "payments"):
            want = _published_ids(gw, stream)
            if stream == "telemetry":
                assert want, "the simulator produced no telemetry"
            if not want:
                continue  # a short run may hold no payment
            raw = consume_all(gw.kafka, f"raw.{stream}", expect=len(want), timeout=90)
            assert _event_ids(raw) == want, (
                f"{gw.name}: raw.{stream} has {len(raw)} of {len(want)}\n{gw.log_tail('edge')}"
            )
            anon = consume_all(gw.kafka, f"anon.{stream}", expect=len(want), timeout=90)
            assert len(anon) == len(want), (
                f"{gw.name}: anon.{stream} has {len(anon)} of {len(want)}\n{gw.log_tail('edge')}"
            )
            assert _event_ids(anon) == want, f"{gw.name}: anon.{stream} differs"
            # In the cloud, under the gateway's own prefix, copied by its own login.
            there = _in_the_cloud(fleet, f"{gw.name}.anon.{stream}", want)
            assert there == want, (
                f"{gw.name}: the cloud has {len(there)} of {len(want)} anon.{stream}\n"
                f"{gw.log_tail('mirror')}"
            )


def _in_the_cloud(fleet: Fleet, topic: str, want: set[str], timeout: float = 300.0) -> set[str]:
    """The event ids in the cloud's ``topic`` once they are all there (MirrorMaker creates
    the topic when it first copies to it), or what arrived by the deadline."""
    admin = fleet.cloud.cloud.login(KAFKA_ADMIN_USER)
    got: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and got != want:
        got = _event_ids(consume_all(admin, topic, expect=len(want), timeout=20, idle=2))
        if got != want:
            time.sleep(2)
    return got


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            out[name.lower().replace("_", "-")] = version
    return out


@pytest.mark.integration
def test_a_declared_stream_is_installed_with_its_topics_and_mirrored(
    fleet: Fleet, converged: str
) -> None:
    gw = fleet.gateways["gw-a"]
    edge_toml = (gw.root / "etc/fleetsentry/edge/edge.toml").read_text()
    streams_dir = gw.root / "etc/fleetsentry/edge/streams"
    assert f'dir = "{streams_dir}"' in edge_toml, edge_toml
    assert (streams_dir / declared_stream.FILE_NAME).read_text() == declared_stream.REEFER_TOML
    topics = AdminClient(client_config(gw.kafka)).list_topics(timeout=30).topics
    assert {"raw.reefer", "anon.reefer", "scores.reefer"} <= set(topics)
    mm2 = next(gw.root.rglob("mm2.properties")).read_text()
    assert r"anon\.reefer" in mm2 and r"scores\.reefer" in mm2
    dynsec = json.loads(next(gw.root.rglob("dynamic-security.json")).read_text())
    acls = {
        a["topic"]
        for r in dynsec["roles"]
        if r["rolename"].startswith("vehicle-")
        for a in r["acls"]
    }
    assert any(t.endswith("/reefer") for t in acls)
    other = fleet.gateways["gw-b"]
    assert not (other.root / "etc/fleetsentry/edge/streams" / declared_stream.FILE_NAME).exists()


@pytest.mark.integration
def test_gateways_get_the_pinned_dependency_versions(fleet: Fleet, converged: str) -> None:
    pins = _pins((REPO / "constraints.txt").read_text().splitlines())
    for gw in fleet.gateways.values():
        frozen = subprocess.run(
            [str(gw.root / "opt/fleetsentry/edge/venv/bin/python"), "-m", "pip", "freeze"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.splitlines()
        installed = _pins(frozen)
        assert {"paho-mqtt", "confluent-kafka", "numpy", "ai-edge-litert"} <= set(installed)
        off = {n: (v, pins.get(n)) for n, v in installed.items() if pins.get(n) != v}
        assert not off, f"{gw.name}: installed (version, pinned) differ: {off}"


@pytest.mark.integration
def test_secrets_are_private_and_the_vault_key_stays_on_the_gateway(
    fleet: Fleet, converged: str
) -> None:
    for gw in fleet.gateways.values():
        private = [
            "etc/fleetsentry/edge/edge.toml",
            "etc/fleetsentry/edge/secrets/fleet.secret",
            "etc/fleetsentry/edge/mirror/mm2.properties",
            "etc/fleetsentry/kafka/credentials.json",
            "var/lib/fleetsentry/mosquitto/dynamic-security.json",
            "etc/fleetsentry/mosquitto/tls/server.key",
            "etc/fleetsentry/mosquitto/tls/ca.key",
            "var/lib/fleetsentry/edge/vault.key",
        ]
        for rel in private:
            mode = (gw.root / rel).stat().st_mode & 0o777
            assert mode == 0o600, f"{gw.name}: {rel} has mode {oct(mode)}"
        key = (gw.root / "var/lib/fleetsentry/edge/vault.key").read_bytes()
        assert len(key) > 40
        assert key not in converged.encode()
        logins = (gw.root / "var/lib/fleetsentry/mosquitto/dynamic-security.json").read_text()
        assert "bridge-password-for-tests" not in logins and '"salt"' in logins
        # The broker asks for a login: a client without one reads nothing.
        with pytest.raises(KafkaException):
            AdminClient({"bootstrap.servers": gw.bootstrap, "log_level": 0}).list_topics(timeout=5)
    keys = {
        (gw.root / "var/lib/fleetsentry/edge/vault.key").read_bytes()
        for gw in fleet.gateways.values()
    }
    assert len(keys) == 2, "each gateway generates its own vault key"


@pytest.mark.integration
def test_systemd_units_verify(fleet: Fleet, converged: str) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    gw = fleet.gateways["gw-a"]
    units = sorted((gw.root / "etc/systemd/system").glob("*.service"))
    assert {u.name for u in units} >= {
        "fleetsentry-kafka.service",
        "fleetsentry-mosquitto.service",
        "fleetsentry-edge-bridge.service",
        "fleetsentry-edge-enricher.service",
        "fleetsentry-edge-scorer.service",
        "fleetsentry-edge-agent.service",
        "fleetsentry-mirror.service",
    }
    proc = _run(["systemd-analyze", "verify", "--man=no", *map(str, units)], timeout=120)
    # verify exits 0 on some problems (unknown settings): any complaint fails the test.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
        proc.stdout + proc.stderr
    )
    for unit in units:
        text = unit.read_text()
        for directive in ("Restart=", "MemoryMax=", "NoNewPrivileges=true", "ProtectSystem=strict"):
            assert directive in text, f"{unit.name} lacks {directive}"


@pytest.mark.integration
def test_second_run_changes_nothing(fleet: Fleet, converged: str) -> None:
    out = fleet.playbook("-e", f"edge_package_src={fleet.wheel}")
    recap = _recap(out)
    assert set(recap) == set(GATEWAYS)
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap.values()), (
        f"{recap}\n" + "\n".join(_changed_tasks(out))
    )


@pytest.mark.integration
def test_check_diff_on_a_converged_gateway_reports_no_change(fleet: Fleet, converged: str) -> None:
    out = fleet.playbook(
        "-e", f"edge_package_src={fleet.wheel}", "--check", "--diff", "--limit", "gw-a"
    )
    recap = _recap(out)
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap.values()), (
        f"{recap}\n" + "\n".join(_changed_tasks(out))
    )
    for gw in fleet.gateways.values():
        assert gw.pid("edge") is not None


@pytest.mark.integration
def test_upgrade_restarts_only_the_edge_and_keeps_data(fleet: Fleet, converged: str) -> None:
    gw = fleet.gateways["gw-a"]
    before = {s: gw.pid(s) for s in ("kafka", "mosquitto", "edge")}
    vault_key = (gw.root / "var/lib/fleetsentry/edge/vault.key").read_bytes()
    model_marker = gw.root / "var/lib/fleetsentry/edge/models/kept-across-upgrades"
    model_marker.write_text("a model the agent installed\n")
    raw_before = _event_ids(consume_all(gw.kafka, "raw.telemetry", timeout=30))
    assert raw_before

    # One gateway is enough to show what an upgrade restarts (the role is the same on both).
    out = fleet.playbook("-e", f"edge_package_src={fleet.upgrade_wheel}", "--limit", "gw-a")
    changed = _changed_tasks(out)
    assert any("Install fleetsentry" in t and "gw-a" in t for t in changed), changed
    assert gw.pid("kafka") == before["kafka"], "kafka restarted although nothing of it changed"
    assert gw.pid("mosquitto") == before["mosquitto"], "mosquitto restarted needlessly"
    assert gw.pid("edge") not in (None, before["edge"]), "the edge services did not restart"
    version = subprocess.run(
        # -I: the repository's own egg-info in the working directory must not answer.
        [
            str(gw.root / "opt/fleetsentry/edge/venv/bin/python"),
            "-I",
            "-c",
            "import importlib.metadata as m; print(m.version('fleetsentry'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version.endswith(".post1")
    assert (gw.root / "var/lib/fleetsentry/edge/vault.key").read_bytes() == vault_key
    assert model_marker.exists()
    raw_after = _event_ids(consume_all(gw.kafka, "raw.telemetry", timeout=30))
    assert raw_before <= raw_after, "Kafka lost data in the upgrade"
