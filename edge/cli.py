"""``fleetsentry edge``: run the gateway's services, supervised or one at a time.

``fleetsentry edge run --config edge.toml`` supervises every service in ``edge/services.py``;
``fleetsentry edge <service> --config edge.toml`` runs one alone (each service in the table
gets its subcommand automatically). Other edge commands (vault administration, ...) are added
below as ordinary click commands on the ``edge`` group.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edge import config as edge_config
from edge.cli_options import CONFIG_OPTION
from edge.dlq.cli import dlq as dlq_commands
from edge.services import SERVICES, Service
from edge.vault.cli import vault as vault_commands


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )


@click.group()
def edge() -> None:
    """The edge gateway: bridge, enricher, scorer and agent."""


@edge.command()
@CONFIG_OPTION
@click.option(
    "--service",
    "only",
    multiple=True,
    help="Run only this service (repeatable). Default: all of them.",
)
@click.option(
    "--grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a service gets to stop after SIGTERM before SIGKILL.",
)
@click.option("-v", "--verbose", is_flag=True)
def run(config_path: Path | None, only: tuple[str, ...], grace: float, verbose: bool) -> None:
    """Run every service as a supervised process until SIGTERM/SIGINT."""
    from edge.services import by_name
    from edge.supervisor import Supervisor

    _logging(verbose)
    cfg = edge_config.load(config_path)
    for name in only:
        by_name(name)
    # Refuse bad stream declarations before any service starts (each loads them again).
    from shared import streams

    streams.use_declarations(cfg.streams.dir)
    sup = Supervisor(cfg, config_path, frozenset(only) if only else None, grace=grace)
    sys.exit(sup.run())


def _service_command(service: Service) -> click.Command:
    @click.command(name=service.name, help=f"Run the {service.name} alone. {service.help}")
    @CONFIG_OPTION
    @click.option(
        "--instance",
        type=int,
        default=0,
        show_default=True,
        help="Process number when several run (client id and metrics port).",
    )
    @click.option(
        "--metrics-port",
        type=int,
        default=None,
        help="Serve /metrics here (0: off). Default: [metrics] base_port + offset.",
    )
    @click.option("-v", "--verbose", is_flag=True)
    def command(
        config_path: Path | None, instance: int, metrics_port: int | None, verbose: bool
    ) -> None:
        from edge.services import run_service

        _logging(verbose)
        run_service(service, edge_config.load(config_path), config_path, instance, metrics_port)

    return command


for _svc in SERVICES:
    edge.add_command(_service_command(_svc))
edge.add_command(vault_commands)


@edge.command("disk-plan")
@CONFIG_OPTION
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Each edge topic's configs as JSON (what `infra up` and the agent apply).",
)
def disk_plan(config_path: Path | None, as_json: bool) -> None:
    """How [disk] budget is shared out: the spool, Mosquitto, the vault, every topic."""
    import json

    from edge import config as edge_config
    from edge.disk import human, plan

    p = plan(edge_config.load(config_path))
    if as_json:
        click.echo(json.dumps(p.topic_configs(), sort_keys=True))
        return
    for what, size in p.rows():
        click.echo(f"{human(size):>12}  {what}")


edge.add_command(dlq_commands)


if __name__ == "__main__":
    # The supervisor starts children as `python -m edge.cli <service>`.
    from shared.errors import FleetsentryError

    try:
        edge(standalone_mode=True)
    except FleetsentryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
