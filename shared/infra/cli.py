"""``fleetsentry infra up | down | status``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from shared import config
from shared.infra.stack import InfraSettings, Stack

# Settings an operator may set from the environment (explicit, not every field).
ENV = {"home": "FLEETSENTRY_HOME"}


def _ports(text: str | None) -> list[int] | None:
    return [int(p) for p in text.split(",")] if text else None


def settings_from(options: dict[str, Any]) -> InfraSettings:
    cfg_path = options.pop("config", None)
    data: dict[str, Any] = {}
    if cfg_path:
        import tomllib

        data = dict(tomllib.loads(Path(cfg_path).read_text()).get("infra", {}))
    for key, value in options.items():
        if value is not None:
            data[key] = str(value) if isinstance(value, Path) else value
    base = config.load(None, InfraSettings, env=ENV)
    merged = {"home": str(base.home), **data}
    return config.convert(merged, InfraSettings, source=cfg_path or "command line")


def _options(fn: Any) -> Any:
    fn = click.option("--config", type=click.Path(dir_okay=False, exists=True),
                      help="TOML file whose [infra] table sets any of these options.")(fn)
    fn = click.option("--home", type=click.Path(file_okay=False, path_type=Path),
                      help="Data, config and log directory (default $FLEETSENTRY_HOME or "
                           "~/.local/share/fleetsentry).")(fn)
    fn = click.option("--host", help="Address to bind (default 127.0.0.1).")(fn)
    fn = click.option("--edge-port", type=int, help="Edge Kafka port (default 9092).")(fn)
    fn = click.option("--edge-controller-port", type=int,
                      help="Edge Kafka KRaft controller port (default 9093).")(fn)
    fn = click.option("--cloud-ports", callback=lambda c, p, v: _ports(v),
                      help="Cloud Kafka ports, comma-separated (default 9192,9194,9196).")(fn)
    fn = click.option("--cloud-controller-ports", callback=lambda c, p, v: _ports(v),
                      help="Cloud KRaft controller ports (default 9193,9195,9197).")(fn)
    fn = click.option("--mqtt-port", type=int, help="Mosquitto port (default 1883).")(fn)
    return fn


@click.group()
def infra() -> None:
    """Run the real brokers locally: edge Kafka, cloud Kafka (3 nodes), Mosquitto."""


@infra.command()
@_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def up(as_json: bool, **options: Any) -> None:
    """Start all three services (a no-op for what already runs) and create the topics."""
    stack = Stack(settings_from(options), quiet=as_json)
    status = stack.up()
    _print_status(status, as_json)


@infra.command()
@_options
def down(**options: Any) -> None:
    """Stop all three services. Their data stays on disk for the next `up`."""
    stack = Stack(settings_from(options))
    killed = stack.down()
    if killed:
        click.echo(f"Stopped; {len(killed)} process(es) needed SIGKILL: {killed}")
    else:
        click.echo("Stopped.")


@infra.command()
@_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool, **options: Any) -> None:
    """Show each service's address and health. Exits 1 if any is unhealthy."""
    status = Stack(settings_from(options), quiet=True).status()
    _print_status(status, as_json)
    if not all(s["healthy"] for s in status.values()):
        raise SystemExit(1)


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    for name, svc in status.items():
        mark = click.style("healthy", fg="green") if svc["healthy"] else click.style(
            "down", fg="red")
        addr = svc.get("bootstrap") or svc.get("address")
        extra = f" ({svc['brokers']}/{svc['nodes']} brokers)" if "brokers" in svc else ""
        click.echo(f"{name:12s} {mark:18s} {addr}{extra}")
    mqtt = status.get("mosquitto", {})
    if mqtt.get("credentials_file"):
        click.echo(f"MQTT credentials: {mqtt['credentials_file']}")
