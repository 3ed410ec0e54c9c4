"""``fleetsentry edge agent``: the model agent as a supervised service.

It also keeps the gateway's disk plan (``edge/disk.py``): it gives the edge topics their
retention bounds at start and serves the disk-usage metrics. A disk that is full or failing
does not crash it: the write is counted (``fleetsentry_write_errors_total``), logged, and
tried again later with the same model message.
"""

from __future__ import annotations

import errno
import logging
import time

from prometheus_client import REGISTRY

from edge import disk
from edge.agent.agent import ModelAgent
from edge.config import EdgeConfig
from edge.metrics import WRITE_ERRORS
from edge.services import ServiceContext
from shared.errors import FleetsentryError

log = logging.getLogger("agent")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
PLAN_RETRY_S = 60.0


def run(ctx: ServiceContext) -> None:
    config = ctx.config
    disk_plan = disk.plan(config)
    REGISTRY.register(disk.DiskCollector(config, disk_plan))
    agent = ModelAgent(config)
    started = False
    delay = RETRY_FIRST_S
    next_plan = 0.0
    try:
        while not ctx.stop.is_set():
            if next_plan >= 0 and time.monotonic() >= next_plan:
                next_plan = _apply_plan(config, disk_plan)
            try:
                if not started:
                    agent.start()
                    started = True
                    log.info("watching %s; models in %s", "cloud.models", config.models_dir)
                agent.step(timeout=0.5)
                delay = RETRY_FIRST_S
            except OSError as exc:
                WRITE_ERRORS.labels(
                    service="agent", errno=errno.errorcode.get(exc.errno or 0, "EIO")
                ).inc()
                log.error(
                    "cannot write to %s (%s): retrying in %.0f s%s",
                    exc.filename or config.models_dir,
                    exc.strerror or exc,
                    delay,
                    "; the disk is full" if disk.is_disk_full(exc) else "",
                )
                ctx.stop.wait(delay)
                delay = min(RETRY_MAX_S, delay * 2)
    finally:
        agent.close()


def _apply_plan(config: EdgeConfig, disk_plan: disk.DiskPlan) -> float:
    """Give the edge topics the plan's bounds; when to try again (-1: done)."""
    try:
        disk.apply_topic_plan(config.kafka, disk_plan)
    except FleetsentryError as exc:
        log.warning(
            "could not give the edge topics their disk bounds (retrying in %.0f s): %s",
            PLAN_RETRY_S,
            exc,
        )
        return time.monotonic() + PLAN_RETRY_S
    log.info(
        "edge topics bounded by the disk plan: %s budget, Kafka %s, spool %s",
        disk.human(disk_plan.budget_bytes),
        disk.human(disk_plan.kafka_bytes),
        disk.human(disk_plan.spool_bytes),
    )
    return -1.0
