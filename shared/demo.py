"""``fleetsentry demo``: bring the whole appliance up on one machine and show it working.

It drives the other commands as processes (``fleetsentry infra``, ``sim``, ``edge``), so it
imports no edge or cloud code itself.
"""

from __future__ import annotations

import json
from typing import Any

import click

from shared.infra.cli import _options, _print_status, settings_from
from shared.infra.stack import Stack


@click.command()
@_options
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
def demo(as_json: bool, **options: Any) -> None:
    """Start edge Kafka, cloud Kafka (3 brokers) and Mosquitto, and show them."""
    stack = Stack(settings_from(options), quiet=as_json)
    status = stack.up()
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    _print_status(status, as_json=False)
    click.echo("\nStop everything with: fleetsentry infra down")
