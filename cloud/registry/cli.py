"""``fleetsentry cloud registry list|show|runs|register|promote|rollback``."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from cloud.config import KafkaSettings, RegistrySettings
from cloud.registry.registry import ModelRecord, Registry
from shared.releases import DEFAULT_FLEET

# cloud.toml's defaults, for commands run without one.
DEFAULT_ROOT = RegistrySettings().root
DEFAULT_BOOTSTRAP = KafkaSettings().bootstrap

ROOT_OPTION = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ROOT,
    show_default=True,
    envvar="FLEETSENTRY_REGISTRY",
    help="The registry's directory.",
)
PUBLISH_OPTIONS = [
    click.option(
        "--bootstrap",
        default=DEFAULT_BOOTSTRAP,
        show_default=True,
        envvar="FLEETSENTRY_CLOUD_BOOTSTRAP",
        help="Cloud Kafka to publish the new champion to (models topic).",
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="cloud.toml whose [kafka] login publishes (TLS, the "
        "publisher's user); default: the one `fleetsentry infra up` made.",
    ),
    click.option("--no-publish", is_flag=True, help="Change the registry only."),
    click.option(
        "--key",
        "key_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Ed25519 key the release is signed with (PEM; default: "
        "the development key `fleetsentry cloud train` creates).",
    ),
    click.option(
        "--fleet",
        default=DEFAULT_FLEET,
        show_default=True,
        envvar="FLEETSENTRY_FLEET",
        help="Fleet the release is for ([agent] fleet on its gateways).",
    ),
    click.option(
        "--release-ttl-days",
        "ttl_days",
        default=30.0,
        show_default=True,
        help="Days until gateways refuse the release (a running model keeps running).",
    ),
    click.option("--actor", default=None, help="Who does this (default: the OS user)."),
    click.option("--reason", default="", help="Why; recorded with the action."),
]


def _publish_options(fn: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed(PUBLISH_OPTIONS):
        fn = opt(fn)
    return fn


def _ts(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _metric(m: ModelRecord, key: str) -> str:
    v = (m.metrics.get("holdout") or {}).get(key)
    return "n/a" if v is None else f"{v:.3f}"


@click.group()
def registry() -> None:
    """Model versions per stream, training runs, promotion and rollback."""


@registry.command("list")
@ROOT_OPTION
@click.option("--stream", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def list_cmd(root: Path, stream: str | None, as_json: bool) -> None:
    """Every model version, newest first, with its state and holdout metrics."""
    with Registry(root) as reg:
        models = reg.models(stream)
    if as_json:
        for m in models:
            click.echo(
                json.dumps(
                    {
                        "version": m.version,
                        "stream": m.stream,
                        "state": m.state,
                        "parent": m.parent,
                        "run_id": m.run_id,
                        "registered_ts": m.registered_ts,
                        "path": str(m.path),
                    }
                )
            )
        return
    table = Table(title=f"models in {root}")
    for col in ("stream", "version", "state", "parent", "run", "ROC AUC", "PR AUC", "registered"):
        table.add_column(col)
    for m in models:
        style = "bold green" if m.state == "champion" else None
        table.add_row(
            m.stream,
            m.version,
            m.state,
            m.parent or "-",
            str(m.run_id or "-"),
            _metric(m, "roc_auc"),
            _metric(m, "pr_auc"),
            _ts(m.registered_ts),
            style=style,
        )
    Console().print(table)


@registry.command()
@ROOT_OPTION
@click.argument("version")
def show(root: Path, version: str) -> None:
    """One version: manifest, metrics, lineage and where its files are."""
    with Registry(root) as reg:
        m = reg.get(version)
        lineage = [r.version for r in reg.lineage(version)]
    out = {
        "version": m.version,
        "stream": m.stream,
        "state": m.state,
        "parent": m.parent,
        "lineage": lineage,
        "path": str(m.path),
        "sha256": m.sha256,
        "run_id": m.run_id,
        "threshold": m.threshold,
        "metrics": m.metrics,
        "data_range": m.manifest.get("data_range"),
        "feature_spec": m.manifest.get("feature_spec"),
    }
    click.echo(json.dumps(out, indent=2, sort_keys=True))


@registry.command()
@ROOT_OPTION
@click.option("--stream", default=None)
@click.option("--limit", default=20, show_default=True)
def runs(root: Path, stream: str | None, limit: int) -> None:
    """Training runs, newest first: trigger, data, duration and the decision."""
    with Registry(root) as reg:
        rows = reg.runs(stream, limit)
    table = Table(title="training runs")
    for col in (
        "id",
        "stream",
        "trigger",
        "by",
        "started",
        "s",
        "records",
        "challenger",
        "decision",
        "why",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r.id),
            r.stream,
            r.trigger,
            r.triggered_by,
            _ts(r.started_ts),
            f"{r.duration_s:.0f}" if r.duration_s is not None else "-",
            str(r.records or "-"),
            r.challenger or "-",
            r.decision or r.status,
            r.decision_reason or r.error,
        )
    Console().print(table)


@registry.command()
@ROOT_OPTION
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--champion", is_flag=True, help="Make it the champion (and publish it).")
@_publish_options
def register(
    root: Path,
    model_dir: Path,
    champion: bool,
    bootstrap: str,
    config_path: Path | None,
    no_publish: bool,
    key_file: Path | None,
    fleet: str,
    ttl_days: float,
    actor: str | None,
    reason: str,
) -> None:
    """Copy a signed model directory into the registry (e.g. a baseline)."""
    with Registry(root) as reg:
        m = reg.register(model_dir, actor=actor or getpass.getuser())
        if champion:
            m = reg.promote(m.version, actor or getpass.getuser(), reason or "registered")
            _publish(m, root, bootstrap, config_path, no_publish, key_file, fleet, ttl_days)
    click.echo(f"{m.version}: {m.state} ({m.path})")


@registry.command()
@ROOT_OPTION
@click.argument("version")
@_publish_options
def promote(
    root: Path,
    version: str,
    bootstrap: str,
    config_path: Path | None,
    no_publish: bool,
    key_file: Path | None,
    fleet: str,
    ttl_days: float,
    actor: str | None,
    reason: str,
) -> None:
    """Make VERSION the champion of its stream and publish it to the gateways."""
    with Registry(root) as reg:
        m = reg.promote(version, actor or getpass.getuser(), reason)
    click.echo(f"{m.stream}: champion is now {m.version}")
    _publish(m, root, bootstrap, config_path, no_publish, key_file, fleet, ttl_days)


@registry.command()
@ROOT_OPTION
@click.argument("stream")
@click.option("--to", "to", default=None, help="Version to go back to (default: the previous).")
@_publish_options
def rollback(
    root: Path,
    stream: str,
    to: str | None,
    bootstrap: str,
    config_path: Path | None,
    no_publish: bool,
    key_file: Path | None,
    fleet: str,
    ttl_days: float,
    actor: str | None,
    reason: str,
) -> None:
    """Put STREAM's previous champion back and publish it to the gateways."""
    with Registry(root) as reg:
        m = reg.rollback(stream, actor or getpass.getuser(), reason, to=to)
    click.echo(f"{stream}: rolled back to {m.version}")
    _publish(m, root, bootstrap, config_path, no_publish, key_file, fleet, ttl_days)


def _publish(
    model: ModelRecord,
    root: Path,
    bootstrap: str,
    config_path: Path | None,
    no_publish: bool,
    key_file: Path | None,
    fleet: str,
    ttl_days: float,
) -> None:
    if no_publish:
        click.echo("not published (--no-publish): gateways keep their current model")
        return
    from cloud.config import login_at
    from cloud.publisher import Publisher, Releaser
    from shared import signing

    key = signing.load_private_key(key_file or signing.dev_private_key_path())
    login = login_at(bootstrap, config_path, "publisher")
    with Publisher(login, Releaser(key, root, fleet, ttl_days * 86_400)) as pub:
        size = pub.publish(model)
    click.echo(f"published {model.version} to the models topic ({size:,} bytes)")
