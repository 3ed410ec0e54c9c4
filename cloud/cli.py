"""``fleetsentry cloud``: the cloud side's commands. Each service adds its subcommand here."""

from __future__ import annotations

from pathlib import Path

import click

from cloud.dashboard.cli import dashboard, run
from cloud.registry.cli import registry
from cloud.signer.cli import signer
from cloud.store.cli import store
from cloud.trainer.cli import train
from cloud.trainer_service.cli import retrain, trainer_service


@click.group()
def cloud() -> None:
    """Cloud services: training, registry, trainer service, signer, store, dashboard, keys."""


@cloud.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def keygen(path: Path) -> None:
    """Create a model-signing key at PATH (0600) and its public key at PATH.pub."""
    from shared import signing

    try:
        key = signing.create_private_key(path)
    except (signing.KeyFileError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"created {path} (key id {signing.key_fingerprint(key)}); give every gateway "
        f"{path.with_suffix('.pub')} as [scorer] public_key (or add it to public_keys "
        "during a rotation)"
    )


cloud.add_command(train)
cloud.add_command(registry)
cloud.add_command(trainer_service)
cloud.add_command(retrain)
cloud.add_command(signer)
cloud.add_command(run)
cloud.add_command(dashboard)
cloud.add_command(store)
