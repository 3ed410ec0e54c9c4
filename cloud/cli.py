"""``fleetsentry cloud``: the cloud side's commands. Each service adds its subcommand here."""

from __future__ import annotations

import click

from cloud.registry.cli import registry
from cloud.trainer.cli import train


@click.group()
def cloud() -> None:
    """Cloud services: model training (more to come: store, registry, dashboard)."""


cloud.add_command(train)
cloud.add_command(registry)
