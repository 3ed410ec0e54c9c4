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
DOWN_BEFORE_STOP_S = 8.0  # the services see every broker gone before they are told to stop
GRACE_S = 10.0  # the supervisor's default: SIGKILL for whatever is left after it
CATCH_UP_S = 180.0


def _freeze_edge_kafka(stack: Stack) -> None:
    for pid in stack.edge.running_pids().values():
        os.kill(pid, signal.SIGSTOP)


def _thaw_edge_kafka(stack: Stack) -> None:
    for pid in stack.edge.running_pids().values():
        os.kill(pid, signal.SIGCONT)


# How the edge Kafka goes away, and how it comes back.
AWAY = {
    "killed": (kill_edge_kafka, start_edge_kafka),
    "frozen": (_freeze_edge_kafka, _thaw_edge_kafka),
}


@pytest.mark.parametrize("away", list(AWAY))
def test_a_gateway_stopped_while_its_kafka_is_away_stops_by_itself_and_loses_nothing(
    stack: Stack, tmp_path: Path, away: str
) -> None:
    go_away, come_back = AWAY[away]
    gw = EdgePipeline(stack, tmp_path / "gw", services=("bridge", "enricher", "scorer", "agent"))
    try:
        gw.start()
        with (
            AnonTail(stack.edge.login(ADMIN_USER)) as tail,
            Fleet(stack, "WSTP", VEHICLES, RATE_PER_S, batch=20) as fleet,
        ):
            fleet.start()
            time.sleep(10.0)
            go_away(stack)
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

            fleet.stop()
            come_back(stack)
            gw.start()
            tally = fleet.reconcile(tail, CATCH_UP_S)
            verdict = f"stopped in {took:.1f}s; {tally}"
            print(verdict)
            assert tally.acked and not tally.lost, verdict + gw.tail(6000)
            assert tally.duplicated == 0, verdict
    finally:
        _thaw_edge_kafka(stack)
        if not stack.edge.running_pids():
            start_edge_kafka(stack)
        gw.stop()
