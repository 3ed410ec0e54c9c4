"""``fleetsentry cloud``: the cloud side's commands. Each service adds its subcommand here."""

from __future__ import annotations

import click

from cloud.dashboard.cli import dashboard, run
from cloud.registry.cli import registry
from cloud.retrain.cli import retrain, trainer_service
from cloud.store.cli import store
from cloud.trainer.cli import train


@click.group()
def cloud() -> None:
    """Cloud services: model training (more to come: store, registry, dashboard)."""


cloud.add_command(train)
cloud.add_command(registry)
cloud.add_command(trainer_service)
cloud.add_command(retrain)
cloud.add_command(run)
cloud.add_command(dashboard)
cloud.add_command(store)
