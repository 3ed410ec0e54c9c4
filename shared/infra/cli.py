"""``fleetsentry infra up | down | status``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from shared import config
from shared.errors import ConfigError
from shared.infra import quota
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


def infra_options(fn: Any) -> Any:
    """The options every `infra` command takes (and `fleetsentry demo`, which runs it)."""
    fn = click.option(
        "--config",
        type=click.Path(dir_okay=False, exists=True),
        help="TOML file whose [infra] table sets any of these options.",
    )(fn)
    fn = click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        help="Data, config and log directory (default $FLEETSENTRY_HOME or "
        "~/.local/share/fleetsentry).",
    )(fn)
    fn = click.option(
        "--host",
        help="Address Mosquitto and the cloud Kafka bind (default "
        "127.0.0.1); the edge Kafka always binds loopback.",
    )(fn)
    fn = click.option("--edge-port", type=int, help="Edge Kafka port (default 9092).")(fn)
    fn = click.option(
        "--edge-controller-port", type=int, help="Edge Kafka KRaft controller port (default 9093)."
    )(fn)
    fn = click.option(
        "--cloud-ports",
        callback=lambda c, p, v: _ports(v),
        help="Cloud Kafka ports, comma-separated, one per node: three (default "
        "9192,9194,9196) or one for a trial (replication factor 1).",
    )(fn)
    fn = click.option(
        "--cloud-controller-ports",
        callback=lambda c, p, v: _ports(v),
        help="Cloud KRaft controller ports (default 9193,9195,9197).",
    )(fn)
    fn = click.option("--mqtt-port", type=int, help="Mosquitto port (default 1883).")(fn)
    fn = click.option(
        "--edge-config",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="The gateway's edge.toml: its [disk] budget bounds the edge topics "
        "(default: a 20 GiB budget; see docs/disk.md), and the streams of "
        "its [streams] dir get topics (and are mirrored) too.",
    )(fn)
    return fn


@click.group()
def infra() -> None:
    """Run the real brokers locally: edge Kafka, cloud Kafka (3 nodes), Mosquitto."""


@infra.command()
@infra_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def up(as_json: bool, **options: Any) -> None:
    """Start all three services (a no-op for what already runs) and create the topics."""
    stack = Stack(settings_from(options), quiet=as_json)
    status = stack.up()
    print_status(status, as_json)


@infra.command()
@infra_options
def down(**options: Any) -> None:
    """Stop all three services. Their data stays on disk for the next `up`."""
    stack = Stack(settings_from(options))
    killed = stack.down()
    if killed:
        click.echo(f"Stopped; {len(killed)} process(es) needed SIGKILL: {killed}")
    else:
        click.echo("Stopped.")


@infra.command()
@infra_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool, **options: Any) -> None:
    """Show each service's address and health. Exits 1 if any is unhealthy."""
    status = Stack(settings_from(options), quiet=True).status()
    print_status(status, as_json)
    if not all(s["healthy"] for s in status.values()):
        raise SystemExit(1)


@infra.group()
def mirror() -> None:
    """MirrorMaker 2 between a gateway's edge Kafka and the cloud (one process per gateway)."""


def _mirror_options(fn: Any) -> Any:
    fn = click.option(
        "--edge-id",
        default="edge-1",
        show_default=True,
        help="The gateway's id: its cluster alias and the cloud topics' prefix.",
    )(fn)
    fn = click.option(
        "--edge-bootstrap", help="The gateway's Kafka (default: this stack's edge Kafka)."
    )(fn)
    return infra_options(fn)


def read_cap(config_path: str | None, option: int | None) -> int:
    """``max_bytes_per_s``: the option, else the ``[mirror]`` table of the config, else 0."""
    if option is not None:
        return quota.validate_rate(option, "--max-bytes-per-s")
    if not config_path:
        return 0
    import tomllib

    table = tomllib.loads(Path(config_path).read_text()).get("mirror", {})
    unknown = sorted(set(table) - {"max_bytes_per_s"})
    if unknown:
        raise ConfigError(
            f"unknown setting in {config_path}; [mirror] takes max_bytes_per_s",
            setting=f"mirror.{unknown[0]}",
        )
    return quota.validate_rate(table.get("max_bytes_per_s", 0), "mirror.max_bytes_per_s")


@mirror.command("up")
@_mirror_options
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for health.")
@click.option(
    "--max-bytes-per-s",
    type=int,
    default=None,
    help="Cap on the bytes/s MirrorMaker reads from the edge (so sends to the cloud); "
    "0: none. Default: [mirror] max_bytes_per_s of --config, else 0.",
)
def mirror_up(
    edge_id: str,
    edge_bootstrap: str | None,
    timeout: float,
    max_bytes_per_s: int | None,
    **options: Any,
) -> None:
    """Start the gateway's MirrorMaker (a no-op if it runs) and wait until both flows run.

    The read cap is applied either way, so `up` on a running MirrorMaker changes it."""
    cap = read_cap(options.get("config"), max_bytes_per_s)
    mm = dataclasses.replace(
        Stack(settings_from(options)).mirror(edge_id, edge_bootstrap), max_bytes_per_s=cap
    )
    pid = mm.start()
    if pid is None:
        mm.apply_read_cap()
    click.echo(
        f"Starting MirrorMaker for {edge_id} (pid {pid}) ..."
        if pid
        else f"MirrorMaker for {edge_id} already runs."
    )
    click.echo(f"Read cap: {cap} bytes/s." if cap else "Read cap: none.")
    mm.wait_healthy(timeout)
    click.echo(f"{edge_id} -> cloud and cloud -> {edge_id} running; logs in {mm.log_dir}")


@infra.command("add-gateway")
@click.argument("edge_id")
@infra_options
def add_gateway(edge_id: str, **options: Any) -> None:
    """Give gateway EDGE_ID its own login on the cloud Kafka, allowed only its own topics
    (<EDGE_ID>.*) and reading models. Idempotent; the cloud must be up."""
    stack = Stack(settings_from(options), quiet=True)
    login = stack.add_gateway(edge_id)
    if isinstance(login, str):
        click.echo(f"the cloud Kafka at {login} has no logins: nothing to add")
        return
    click.echo(
        f"{edge_id}: cloud Kafka user {login.username}, password in "
        f"{login.credentials_file}, CA certificate {login.ca_file}"
    )


@mirror.command("down")
@_mirror_options
def mirror_down(edge_id: str, edge_bootstrap: str | None, **options: Any) -> None:
    """Stop the gateway's MirrorMaker; it resumes from its committed offsets on `up`."""
    killed = Stack(settings_from(options)).mirror(edge_id, edge_bootstrap, provision=False).stop()
    click.echo(f"Stopped{'; needed SIGKILL' if killed else ''}.")


@mirror.command("status")
@_mirror_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def mirror_status(edge_id: str, edge_bootstrap: str | None, as_json: bool, **options: Any) -> None:
    """Show the state of each connector and task. Exits 1 unless both flows run."""
    status = (
        Stack(settings_from(options), quiet=True)
        .mirror(edge_id, edge_bootstrap, provision=False)
        .status()
    )
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        mark = (
            click.style("healthy", fg="green")
            if status["healthy"]
            else click.style("down", fg="red")
        )
        click.echo(f"mirror {edge_id:10s} {mark}")
        for name, state in sorted(status["tasks"].items()):
            click.echo(f"  {name:55s} {state}")
        if status.get("backlog"):
            behind = sum(b["behind"] for b in status["backlog"].values())
            deleted = sum(b["deleted"] for b in status["backlog"].values())
            click.echo(
                f"  backlog: {behind} offsets not yet in the cloud; {deleted} deleted by "
                f"retention on the edge before they crossed"
            )
    if not status["healthy"]:
        raise SystemExit(1)


def print_status(status: dict[str, Any], as_json: bool) -> None:
    """`infra status`'s report of each process: JSON, or a table for people."""
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    for name, svc in status.items():
        mark = (
            click.style("healthy", fg="green") if svc["healthy"] else click.style("down", fg="red")
        )
        addr = svc.get("bootstrap") or svc.get("address")
        extra = f" ({svc['brokers']}/{svc['nodes']} brokers)" if "brokers" in svc else ""
        click.echo(f"{name:12s} {mark:18s} {addr}{extra}")
    mqtt = status.get("mosquitto", {})
    if mqtt.get("credentials_file"):
        click.echo(f"MQTT credentials: {mqtt['credentials_file']}")
    edge = status.get("edge_kafka", {})
    if edge.get("credentials_file"):
        click.echo(
            f"Edge Kafka credentials (SASL/SCRAM users {', '.join(edge['users'])}): "
            f"{edge['credentials_file']}"
        )


@mirror.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option(
    "--properties",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="MirrorMaker's config (mm2.properties): the gateway, and the logins to read its "
    "Connect status with.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds between two looks at the tasks' states.",
)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def mirror_run(properties: Path, interval: float, argv: tuple[str, ...]) -> None:
    """Run MirrorMaker (ARGV: its java command line, after --) under a watchdog.

    When Connect kills a task (it never restarts one, and the JVM runs on), the watchdog
    stops MirrorMaker and exits 1, for systemd to start it again. Signals go to the JVM; the
    exit status is the JVM's. The Ansible role runs MirrorMaker so."""
    from shared.infra import mirror_watch

    raise SystemExit(mirror_watch.run(list(argv), properties, interval))


@mirror.command("heal")
@_mirror_options
def mirror_heal(edge_id: str, edge_bootstrap: str | None, **options: Any) -> None:
    """Restart the gateway's MirrorMaker if Connect has killed one of its tasks.

    Connect never restarts a task it killed on an error it does not retry, and the process
    runs on: the partitions that task copied stay behind for good. Exactly-once makes the
    restart safe. Run it now and then (the demo does, at every summary)."""
    mm = Stack(settings_from(options), quiet=True).mirror(edge_id, edge_bootstrap, provision=False)
    failed = mm.heal()
    for name, error in sorted(failed.items()):
        click.echo(f"{name} had failed: {error or 'no reason given'}")
    click.echo(f"{edge_id}: MirrorMaker restarted." if failed else f"{edge_id}: nothing to heal.")
