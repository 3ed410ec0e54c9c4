"""The bridge as a service of ``fleetsentry edge`` (see edge/services.py)."""

from __future__ import annotations

import logging

from edge.bridge.bridge import Bridge
from edge.services import ServiceContext

log = logging.getLogger("bridge")


def run(ctx: ServiceContext) -> None:
    bridge = Bridge(ctx.config, ctx.instance)
    bridge.start()
    log.info(
        "bridging MQTT %s:%d -> Kafka %s as %s (metrics on port %s)",
        ctx.config.mqtt.host,
        ctx.config.mqtt.port,
        ctx.config.kafka.bootstrap,
        bridge.client_id,
        ctx.metrics_port,
    )
    try:
        bridge.run(ctx.stop)
    finally:
        left = bridge.close()
        log.info(
            "stopped: received %d, produced %d, dead-lettered %d, %d unconfirmed (%s)",
            bridge.received,
            bridge.produced,
            bridge.dead_lettered,
            left,
            "in the outage spool or redelivered by the broker"
            if bridge.spooling
            else "redelivered by the broker",
        )
