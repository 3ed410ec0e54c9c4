"""A gateway told to stop while its edge Kafka is away stops in its grace, and loses nothing.

Under a publishing fleet the edge Kafka goes away, killed (kill -9: every connection
refused) or frozen (SIGSTOP: connections stay open and no call is answered, as in a long
pause of the broker's machine; a service mid-commit then waits in the call). The
gateway (``fleetsentry edge run``: bridge, enricher, scorer, agent) is sent SIGTERM while
Kafka is still away, as a ``systemctl stop`` or a reboot would. Every service must end by
itself within the supervisor's grace: none may sit waiting for Kafka until it is killed; nor
may the bridge's outage spool end while Kafka is still away. Then Kafka and the gateway
start again, and every event Mosquitto acknowledged reaches ``anon.telemetry`` once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from shared.infra.stack import Stack
from shared.kafka_config import ADMIN_USER
from tests.bridge_payloads import encode, telemetry
from tests.bridge_support import mqtt_client
from tests.edge_pipeline import EdgePipeline
from tests.support import AnonTail, kill_edge_kafka, start_edge_kafka

pytestmark = pytest.mark.integration

VEHICLES = 20
RATE_PER_S = 400
DOWN_BEFORE_STOP_S = 8.0  # the services see every broker gone before they are told to stop
GRACE_S = 10.0  # the supervisor's default: SIGKILL for whatever is left after it
CATCH_UP_S = 180.0


def _freeze_edge_kafka(stack: Stack) -> None:
    for pid in stack.edge.running_pids().values():
        os.kill(pid, signal.SIGSTOP)


def _thaw_edge_kafka(stack: Stack) -> None:
    for pid in stack.edge.running_pids().values():
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("away", ["killed", "frozen"])
def test_a_gateway_stopped_while_its_kafka_is_away_stops_by_itself_and_loses_nothing(
    stack: Stack, tmp_path: Path, away: str
) -> None:
    gw = EdgePipeline(stack, tmp_path / "gw", services=("bridge", "enricher", "scorer", "agent"))
    tail: AnonTail | None = None
    client: mqtt.Client | None = None
    infos: list[tuple[mqtt.MQTTMessageInfo, str]] = []
    try:
        gw.start()
        tail = AnonTail(stack.edge.login(ADMIN_USER))
        tail.start()
        client = mqtt_client(stack, f"fleet-{uuid.uuid4().hex[:6]}")
        vins = [f"WSTP{n:013d}" for n in range(VEHICLES)]
        tag = uuid.uuid4().hex[:8]
        started = time.monotonic()
        stop = threading.Event()
        sent = [0]

        def drive() -> None:
            assert client is not None
            while not stop.is_set():
                if sent[0] >= RATE_PER_S * (time.monotonic() - started):
                    time.sleep(0.02)
                    continue
                for _ in range(20):
                    vin, eid = vins[sent[0] % VEHICLES], f"{tag}-{sent[0]}"
                    info = client.publish(
                        f"fleet/{vin}/telemetry", encode(telemetry(vin, eid, time.time())), qos=1
                    )
                    infos.append((info, eid))
                    sent[0] += 1

        fleet = threading.Thread(target=drive, daemon=True)
        fleet.start()
        time.sleep(10.0)
        if away == "killed":
            kill_edge_kafka(stack)
        else:
            _freeze_edge_kafka(stack)
        time.sleep(DOWN_BEFORE_STOP_S)
        assert gw.proc is not None
        t0 = time.monotonic()
        gw.proc.terminate()
        try:
            gw.proc.wait(GRACE_S + 20)
        finally:
            took = time.monotonic() - t0
        lines = gw.log.read_text().splitlines()
        killed = [ln for ln in lines if "killed after" in ln]
        assert not killed, f"stopping took {took:.1f}s:\n" + "\n".join(killed) + gw.tail(6000)
        # Kafka never came back, so the bridge's outage spool never drained.
        drained = [ln for ln in lines if "outage spool drained" in ln]
        assert not drained, "\n".join(drained)

        stop.set()
        fleet.join(10)
        if away == "killed":
            start_edge_kafka(stack)
        else:
            _thaw_edge_kafka(stack)
        gw.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(i.is_published() for i, _ in infos[-500:]):
            time.sleep(0.2)
        acked = {eid for info, eid in infos if info.is_published()}
        deadline = time.monotonic() + CATCH_UP_S
        while time.monotonic() < deadline and not acked <= set(tail.seen):
            time.sleep(1.0)
        lost = acked - set(tail.seen)
        dups = sum(n - 1 for n in tail.seen.values() if n > 1)
        verdict = (
            f"stopped in {took:.1f}s; sent {sent[0]}, acknowledged {len(acked)}, in "
            f"anon.telemetry {len(tail.seen)}: lost {len(lost)}, duplicated {dups}"
        )
        print(verdict)
        assert acked and not lost, verdict + gw.tail(6000)
        assert dups == 0, verdict
    finally:
        if client is not None:
            client.disconnect()
            client.loop_stop()
        if tail is not None:
            tail.close()
        _thaw_edge_kafka(stack)
        if not stack.edge.running_pids():
            start_edge_kafka(stack)
        gw.stop()
