"""The edge Kafka killed (kill -9) and started again, three times, under a publishing fleet:
every event Mosquitto acknowledged reaches ``anon.telemetry`` once, through the real bridge
and enricher, and the enricher keeps working after each restart (it neither stalls nor needs
a kill to stop)."""

from __future__ import annotations

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
RESTARTS = 3
UP_S = 20.0  # the edge Kafka runs this long after each start before the next kill
DOWN_S = 8.0
CATCH_UP_S = 180.0


class Gateway(EdgePipeline):
    def write_config(self) -> Path:
        super().write_config()
        text = self.config.read_text().replace(
            "[bridge]\n", "[bridge]\nvehicle_rate_per_s = 0\n", 1
        )
        self.config.write_text(text)
        return self.config


def test_the_enricher_carries_on_after_the_edge_kafka_is_killed_and_restarted(
    stack: Stack, tmp_path: Path
) -> None:
    gw = Gateway(stack, tmp_path / "gw", services=("bridge", "enricher"))
    tail: AnonTail | None = None
    client: mqtt.Client | None = None
    infos: list[tuple[mqtt.MQTTMessageInfo, str]] = []
    log: list[str] = []
    try:
        gw.start()
        tail = AnonTail(stack.edge.login(ADMIN_USER))
        tail.start()
        client = mqtt_client(stack, f"fleet-{uuid.uuid4().hex[:6]}")
        vins = [f"WKRS{n:013d}" for n in range(VEHICLES)]
        tag = uuid.uuid4().hex[:8]
        started = time.monotonic()
        stop = threading.Event()
        sent = [0]

        def drive() -> None:  # a steady fleet, whatever the edge Kafka is doing
            assert client is not None
            while not stop.is_set():
                if sent[0] >= RATE_PER_S * (time.monotonic() - started):
                    time.sleep(0.02)
                    continue
                for _ in range(50):
                    vin, eid = vins[sent[0] % VEHICLES], f"{tag}-{sent[0]}"
                    infos.append(
                        (
                            client.publish(
                                f"fleet/{vin}/telemetry",
                                encode(telemetry(vin, eid, time.time())),
                                qos=1,
                            ),
                            eid,
                        )
                    )
                    sent[0] += 1

        fleet = threading.Thread(target=drive, daemon=True)
        fleet.start()

        def note(what: str) -> None:
            assert tail is not None
            log.append(
                f"{time.monotonic() - started:6.1f}s {what}; sent {sent[0]}, "
                f"in anon.* {len(tail.seen)}"
            )

        for _ in range(RESTARTS):
            time.sleep(UP_S)
            kill_edge_kafka(stack)
            note("edge Kafka killed")
            time.sleep(DOWN_S)
            start_edge_kafka(stack)
            note("edge Kafka started again")
        time.sleep(UP_S)
        stop.set()
        fleet.join(10)
        sent_n = sent[0]
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
            f"sent {sent_n}, acknowledged {len(acked)}, in anon.telemetry "
            f"{len(tail.seen)}: lost {len(lost)}, duplicated {dups}"
        )
        print(verdict, *log, sep="\n")
        assert len(acked) > 0.95 * sent_n, verdict
        assert not lost, f"{verdict}\n" + "\n".join(log) + "\n" + gw.tail(6000)
        assert dups == 0, verdict
        assert gw.proc is not None and gw.proc.poll() is None, gw.tail()
        # Nor did it sit a minute holding no partition until the guard ended it (its consumer
        # fenced by the instance the supervisor started after a hung call, say).
        stalled = [
            line for line in gw.log.read_text().splitlines() if "has held no partition" in line
        ]
        assert not stalled, "\n".join(stalled)
    finally:
        if client is not None:
            client.disconnect()
            client.loop_stop()
        if tail is not None:
            tail.close()
        if not stack.edge.running_pids():
            start_edge_kafka(stack)
        t0 = time.monotonic()
        gw.stop()
        print(f"edge run stopped in {time.monotonic() - t0:.1f}s")
