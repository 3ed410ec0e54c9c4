"""``fleetsentry edge agent``: the model agent as a supervised service."""

from __future__ import annotations

import logging

from edge.agent.agent import ModelAgent
from edge.services import ServiceContext

log = logging.getLogger("agent")


def run(ctx: ServiceContext) -> None:
    agent = ModelAgent(ctx.config)
    agent.start()
    log.info("watching %s; models in %s", "cloud.models", ctx.config.models_dir)
    try:
        while not ctx.stop.is_set():
            agent.step(timeout=0.5)
    finally:
        agent.close()
