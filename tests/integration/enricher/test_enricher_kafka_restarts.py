"""The edge Kafka killed (kill -9) and started again, three times, under a publishing fleet:
every event Mosquitto acknowledged reaches ``anon.telemetry`` once, through the real bridge
and enricher, and the enricher keeps working after each restart (it neither stalls nor needs
a kill to stop)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.infra.stack import Stack
from shared.kafka_config import ADMIN_USER
from tests.edge_pipeline import EdgePipeline
from tests.support import AnonTail, Fleet, kill_edge_kafka, start_edge_kafka

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
    log: list[str] = []
    try:
        gw.start()
        with (
            AnonTail(stack.edge.login(ADMIN_USER)) as tail,
            Fleet(stack, "WKRS", VEHICLES, RATE_PER_S, batch=50) as fleet,
        ):
            fleet.start()  # a steady fleet, whatever the edge Kafka is doing

            def note(what: str) -> None:
                log.append(
                    f"{time.monotonic() - fleet.started:6.1f}s {what}; sent {fleet.sent}, "
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
            tally = fleet.reconcile(tail, CATCH_UP_S)
            verdict = str(tally)
            print(verdict, *log, sep="\n")
            assert len(tally.acked) > 0.95 * tally.sent, verdict
            assert not tally.lost, f"{verdict}\n" + "\n".join(log) + "\n" + gw.tail(6000)
            assert tally.duplicated == 0, verdict
            assert gw.proc is not None and gw.proc.poll() is None, gw.tail()
            # Nor did it sit a minute holding no partition until the guard ended it (its
            # consumer fenced by the instance the supervisor started after a hung call, say).
            stalled = [
                line for line in gw.log.read_text().splitlines() if "has held no partition" in line
            ]
            assert not stalled, "\n".join(stalled)
    finally:
        if not stack.edge.running_pids():
            start_edge_kafka(stack)
        t0 = time.monotonic()
        gw.stop()
        print(f"edge run stopped in {time.monotonic() - t0:.1f}s")
