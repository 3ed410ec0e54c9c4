"""The enricher as a service of ``fleetsentry edge`` (see edge/services.py)."""

from __future__ import annotations

import logging

from edge.enricher.enricher import Enricher
from edge.services import ServiceContext
from edge.vault.setup import fleet_tokenizer, open_vault

log = logging.getLogger("enricher")


def run(ctx: ServiceContext) -> None:
    vault = open_vault(ctx.config)
    enricher = Enricher(ctx.config, vault, fleet_tokenizer(ctx.config), ctx.instance)
    try:
        enricher.start()
        log.info(
            "enriching raw.* -> anon.* on %s as %s (vault %s, metrics on port %s)",
            ctx.config.kafka.bootstrap,
            enricher.transactional_id,
            vault.path,
            ctx.metrics_port,
        )
        enricher.run(ctx.stop)
    finally:
        enricher.close()
        vault.close()
        log.info(
            "stopped: consumed %d, produced %d, duplicates dropped %d, rejected %d",
            enricher.consumed,
            enricher.produced,
            enricher.duplicates,
            enricher.rejected,
        )
