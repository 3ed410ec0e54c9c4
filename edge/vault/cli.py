"""``fleetsentry edge vault``: reveal a token (audited), erase a person, purge old values."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge import config as edge_config
from edge.cli_options import CONFIG_OPTION
from edge.vault.errors import UnknownToken
from edge.vault.setup import open_vault


@click.group()
def vault() -> None:
    """The PII vault: personal data stays on this gateway, encrypted."""


@vault.command()
@click.argument("token")
@click.option("--actor", required=True, help="Who is looking (recorded in the audit log).")
@CONFIG_OPTION
def reveal(token: str, actor: str, config_path: Path | None) -> None:
    """Print the value behind TOKEN (the lookup is audited)."""
    with open_vault(edge_config.load(config_path)) as v:
        try:
            click.echo(v.reveal(token, actor))
        except UnknownToken as exc:
            raise click.ClickException(f"{exc} (never stored, purged, or erased)") from None


@vault.command()
@click.option("--person", required=True, help="The driver id whose data is erased.")
@click.option("--actor", default="operator", show_default=True)
@CONFIG_OPTION
def erase(person: str, actor: str, config_path: Path | None) -> None:
    """Erase one person: their key is destroyed, so their values become unreadable."""
    with open_vault(edge_config.load(config_path)) as v:
        n = v.erase_person(person, actor)
    click.echo(f"erased {n} values of the person; their data key is destroyed")


@vault.command()
@click.option(
    "--older-than-days", "days", type=float, default=None, help="Default: [vault] retention_days."
)
@CONFIG_OPTION
def purge(days: float | None, config_path: Path | None) -> None:
    """Delete values not seen for N days (the retention limit)."""
    cfg = edge_config.load(config_path)
    limit = cfg.vault.retention_days if days is None else days
    with open_vault(cfg) as v:
        n = v.purge_older_than(limit)
    click.echo(f"purged {n} values not seen for {limit:g} days")


@vault.command()
@click.option("--limit", type=int, default=50, show_default=True)
@CONFIG_OPTION
def audit(limit: int, config_path: Path | None) -> None:
    """Show the latest audit log entries (JSON lines)."""
    with open_vault(edge_config.load(config_path)) as v:
        for row in v.audit_log(limit):
            click.echo(json.dumps(row))
