"""Live fleet over TLS against a real Mosquitto with a TLS listener and password auth."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import firmware_sim as fs
import msgspec
import paho.mqtt.client as mqtt
import pytest
from firmware_sim.errors import ConnectError
from firmware_sim.live import LiveRunner
from firmware_sim.session import ConnectSettings

from shared.infra.mosquitto import ADMIN_USER, Mosquitto
from shared.infra.ports import free_ports
from shared.infra.tls import TlsFiles, make_local_ca

PASSWORD = "sim-tls-password"
VEHICLES = 40
DURATION_S = 20.0
FLEETSENTRY = str(Path(sys.executable).parent / "fleetsentry")


class TlsBroker:
    def __init__(self, mqtt_: Mosquitto, tls: TlsFiles, wrong_ca: Path) -> None:
        self.mqtt = mqtt_
        self.tls = tls
        self.wrong_ca = wrong_ca
        self.admin = (ADMIN_USER, mqtt_.credentials()[ADMIN_USER])

    @property
    def port(self) -> int:
        assert self.mqtt.tls_port is not None
        return self.mqtt.tls_port


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    home = tmp_path_factory.mktemp("tls-broker")
    tls = make_local_ca(home / "pki")
    wrong = make_local_ca(home / "other-pki", name="someone else")
    plain, secure = free_ports(2)
    broker = Mosquitto(home / "mosquitto", plain, tls=tls, tls_port=secure)
    broker.start()
    try:
        broker.wait_healthy()
        yield TlsBroker(broker, tls, wrong.ca_file)
    finally:
        broker.stop()


class TlsCounter:
    """An admin subscriber over TLS that counts every delivery of every event id."""

    def __init__(self, broker: TlsBroker) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="sim-tls-counter", protocol=mqtt.MQTTv5
        )
        c.username_pw_set(*broker.admin)
        c.tls_set(ca_certs=str(broker.tls.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.on_connect = lambda cl, *_: cl.subscribe(
            [("fleet/+/telemetry", 1), ("fleet/+/payments", 1)]
        )
        c.on_subscribe = lambda *_: self._subscribed.set()
        c.on_message = self._on_message
        c.connect(broker.mqtt.host, broker.port)
        c.loop_start()
        self.client = c
        assert self._subscribed.wait(15), "the TLS subscriber never subscribed"

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        event_id = msgspec.json.decode(msg.payload)["event_id"]
        with self._lock:
            self.counts[event_id] += 1

    def wait_for(self, n: int, timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if sum(self.counts.values()) >= n:
                    break
            time.sleep(0.2)
        time.sleep(1.0)  # a duplicate, if any, would arrive right behind
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _fleet(broker: TlsBroker, vehicles: int, duration_s: float, seed: int) -> fs.Fleet:
    fleet = fs.Fleet(
        fs.SimSettings(
            vehicles=vehicles, duration_s=duration_s, seed=seed, start_ts=None, payment_rate=3.0
        )
    )
    broker.mqtt.register_vehicles(fleet.credentials(PASSWORD))
    return fleet


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_every_event_arrives_exactly_once_over_tls(tls_broker: TlsBroker, tmp_path: Path) -> None:
    fleet = _fleet(tls_broker, VEHICLES, DURATION_S, seed=31)
    counter = TlsCounter(tls_broker)
    acked: list[str] = []
    conf = ConnectSettings(
        host=tls_broker.mqtt.host,
        port=tls_broker.port,
        password=PASSWORD,
        tls_ca=str(tls_broker.tls.ca_file),
    )
    runner = LiveRunner(fleet, conf, tmp_path / "buffer", drain_timeout_s=30.0, on_ack=acked.append)
    try:
        result = runner.run()
        summary = result.summary()
        generated = fleet.stats.telemetry + fleet.stats.payments
        assert summary["connects"] == VEHICLES and summary["connect_errors"] == {}, summary
        assert result.drained and summary["buffered_left"] == 0, summary
        assert summary["dropped"] == 0 and summary["rejected"] == 0, summary
        assert summary["acked"] == generated == len(acked) == len(set(acked)) > VEHICLES
        counts = counter.wait_for(len(acked), timeout=30)
    finally:
        counter.close()
    assert set(counts) == set(acked), (
        f"{len(set(acked) - set(counts))} acked events never "
        f"arrived; {len(set(counts) - set(acked))} unknown"
    )
    duplicates = {k: n for k, n in counts.items() if n != 1}
    assert not duplicates, f"{len(duplicates)} events arrived more than once"


def _run_cli(broker: TlsBroker, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    fleet = _fleet(broker, 3, 5.0, seed=32)
    assert len(fleet.vehicles) == 3
    return subprocess.run(
        [
            FLEETSENTRY,
            "sim",
            "run",
            "--vehicles",
            "3",
            "--duration",
            "5",
            "--seed",
            "32",
            "--password",
            PASSWORD,
            "--mqtt",
            f"{broker.mqtt.host}:{broker.port}",
            "--connect-wait",
            "1",
            "--buffer-dir",
            str(tmp_path / "buffer"),
            *extra,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_a_wrong_ca_fails_the_run_with_the_reason(tls_broker: TlsBroker, tmp_path: Path) -> None:
    run = _run_cli(tls_broker, tmp_path, "--tls-ca", str(tls_broker.wrong_ca))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "no vehicle could connect" in run.stderr, run.stderr
    assert "certificate was not accepted" in run.stderr, run.stderr
    assert "--tls-ca" in run.stderr


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_plain_mqtt_to_the_tls_port_fails_the_run_with_a_hint(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    run = _run_cli(tls_broker, tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "closed the connection before accepting the login" in run.stderr, run.stderr
    assert "pass --tls-ca" in run.stderr, run.stderr


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_connect_failures_show_in_progress_while_retrying(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    fleet = _fleet(tls_broker, 2, 5.0, seed=33)
    seen: list[tuple[int, str]] = []
    conf = ConnectSettings(
        host=tls_broker.mqtt.host,
        port=tls_broker.port,
        password=PASSWORD,
        tls_ca=str(tls_broker.wrong_ca),
    )
    runner = LiveRunner(
        fleet,
        conf,
        tmp_path / "buffer",
        connect_wait_s=2.0,
        on_progress=lambda p: seen.append((p.connect_errors, p.last_connect_error)),
    )
    with pytest.raises(ConnectError, match="certificate was not accepted"):
        runner.run()
    failing = [(n, why) for n, why in seen if n]
    assert failing, seen
    assert "certificate was not accepted" in failing[-1][1]
