"""``fleetsentry cloud trainer-service`` (continuous) and ``fleetsentry cloud retrain`` (now)."""

from __future__ import annotations

import getpass
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
import msgspec

from cloud.config import KafkaSettings, RegistrySettings
from shared import signing
from shared import streams as shared_streams
from shared.errors import FleetsentryError

if TYPE_CHECKING:
    from cloud.config import ReleaseSettings, TrainerSettings
    from cloud.publisher import Releaser
    from cloud.registry import Registry
    from cloud.trainer_service.source import DataSource
    from cloud.trainer_service.trainer_service import TrainerService
    from shared.kafka_config import Target

STREAM_HELP = (
    "A stream to train: telemetry, payments or one declared in cloud.toml's [streams] dir "
    "(repeat for several)."
)

_COMMON = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="cloud.toml: its [kafka] login and [registry] root "
        "apply (--bootstrap / --registry win when given).",
    ),
    click.option(
        "--registry",
        "registry_root",
        type=click.Path(file_okay=False, path_type=Path),
        default=RegistrySettings().root,
        show_default=True,
        envvar="FLEETSENTRY_REGISTRY",
    ),
    click.option(
        "--bootstrap",
        default=KafkaSettings().bootstrap,
        show_default=True,
        envvar="FLEETSENTRY_CLOUD_BOOTSTRAP",
        help="Cloud Kafka: replicated data in, models topic out.",
    ),
    click.option(
        "--key",
        "key_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=signing.dev_private_key_path(),
        show_default=True,
        help="Ed25519 signing key (PEM; `fleetsentry cloud keygen` makes one; the "
        "default development key is created when missing).",
    ),
    click.option("--epochs", default=12, show_default=True),
    click.option("--min-records", default=1000, show_default=True),
    click.option("--no-publish", is_flag=True, help="Record promotions without publishing."),
]


def _common(fn: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed(_COMMON):
        fn = opt(fn)
    return fn


def _from_config(
    config_path: Path | None, registry_root: Path, bootstrap: str
) -> tuple[Path, Target, DataSource, TrainerSettings, ReleaseSettings]:
    """The registry, the publisher's cloud Kafka login, and the data source to use: options
    given on the command line, else cloud.toml's (when --config is given), else the
    defaults."""
    from click.core import ParameterSource

    from cloud.config import load
    from cloud.trainer_service.source import source_for

    conf = load(config_path)
    shared_streams.use_declarations(conf.streams.dir)  # the operator's streams beside ours
    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return config_path is None or ctx.get_parameter_source(name) not in (
            ParameterSource.DEFAULT,
            None,
        )

    kafka = msgspec.structs.replace(
        conf.kafka, bootstrap=bootstrap if given("bootstrap") else conf.kafka.bootstrap
    )
    conf = msgspec.structs.replace(conf, kafka=kafka)
    return (
        registry_root if given("registry_root") else conf.registry.root,
        kafka.login("publisher"),
        source_for(conf),
        conf.trainer,
        conf.releases,
    )


def _known(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names``, each a registered stream (a usage error naming the known ones if not)."""
    try:
        return tuple(shared_streams.get(name).name for name in names)
    except FleetsentryError as exc:
        raise click.BadParameter(str(exc), param_hint="--stream") from None


def _releaser(key_file: Path, registry_root: Path, rel: ReleaseSettings) -> Releaser:
    from cloud.publisher import Releaser

    return Releaser(
        signing.ensure_private_key(key_file), registry_root, rel.fleet, rel.ttl_days * 86_400
    )


def _service(
    registry_root: Path,
    source: DataSource,
    key_file: Path,
    epochs: int,
    min_records: int,
    streams: tuple[str, ...],
    schedule_s: float = 24 * 3600.0,
    drift_check_s: float = 300.0,
    recent_s: float = 1800.0,
    trainer: TrainerSettings | None = None,
) -> tuple[TrainerService, Registry]:
    from cloud.config import TrainerSettings
    from cloud.registry import Registry
    from cloud.trainer_service.trainer_service import TrainerService, settings_from

    settings = settings_from(
        trainer or TrainerSettings(),
        epochs,
        streams=_known(streams) or None,
        min_records=min_records,
        schedule_s=schedule_s,
        drift_check_s=drift_check_s,
        recent_s=recent_s,
    )
    registry = Registry(registry_root).start()
    return TrainerService(
        registry, source, signing.ensure_private_key(key_file), settings
    ), registry


@click.command("trainer-service")
@_common
@click.option("--stream", "streams", multiple=True, help=STREAM_HELP + " Default: every stream.")
@click.option(
    "--schedule",
    "schedule_s",
    default=24 * 3600.0,
    show_default=True,
    help="Retrain a stream whose champion is older than this (seconds).",
)
@click.option(
    "--drift-check",
    "drift_check_s",
    default=300.0,
    show_default=True,
    help="Check for drift this often (seconds).",
)
@click.option(
    "--recent",
    "recent_s",
    default=1800.0,
    show_default=True,
    help="Recent window compared with the training window (seconds of event time).",
)
@click.option("--once", is_flag=True, help="One cycle, then exit.")
def trainer_service(
    config_path: Path | None,
    registry_root: Path,
    bootstrap: str,
    key_file: Path,
    epochs: int,
    min_records: int,
    no_publish: bool,
    streams: tuple[str, ...],
    schedule_s: float,
    drift_check_s: float,
    recent_s: float,
    once: bool,
) -> None:
    """Retrain on a schedule and on drift; promote only better models; publish them."""
    from cloud.publisher import Publisher

    registry_root, publisher_login, source, trainer, rel = _from_config(
        config_path, registry_root, bootstrap
    )

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    svc, registry = _service(
        registry_root,
        source,
        key_file,
        epochs,
        min_records,
        streams,
        schedule_s=schedule_s,
        drift_check_s=drift_check_s,
        recent_s=recent_s,
        trainer=trainer,
    )
    publisher = (
        None
        if no_publish
        else Publisher(publisher_login, _releaser(key_file, registry_root, rel)).start()
    )
    svc.publisher = publisher
    try:
        _serve(svc, registry, once)
    finally:
        if publisher is not None:
            publisher.close()
        registry.close()


def _serve(svc: TrainerService, registry: Registry, once: bool) -> None:
    """One cycle (each run's decision and each stream's state said), or cycles until SIGTERM
    or SIGINT."""
    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if not once:
        svc.run(stop)
        return
    for run in svc.cycle():
        click.echo(f"run {run.id} {run.stream}: {run.decision} ({run.decision_reason})")
    for st in registry.statuses():
        click.echo(f"{st.stream}: {st.state} - {st.detail}")


@click.command("retrain")
@_common
@click.option("--stream", "streams", multiple=True, required=True, help=STREAM_HELP)
@click.option("--actor", default=None, help="Who asks (default: the OS user).")
@click.option("--reason", default="manual retrain", show_default=True)
def retrain(
    config_path: Path | None,
    registry_root: Path,
    bootstrap: str,
    key_file: Path,
    epochs: int,
    min_records: int,
    no_publish: bool,
    streams: tuple[str, ...],
    actor: str | None,
    reason: str,
) -> None:
    """Train a challenger now; promote and publish it only if it beats the champion."""
    from cloud.publisher import Publisher

    registry_root, publisher_login, source, trainer, rel = _from_config(
        config_path, registry_root, bootstrap
    )
    svc, registry = _service(
        registry_root, source, key_file, epochs, min_records, streams, trainer=trainer
    )
    publisher = (
        None
        if no_publish
        else Publisher(publisher_login, _releaser(key_file, registry_root, rel)).start()
    )
    svc.publisher = publisher
    try:
        for stream in streams:
            run = svc.retrain(stream, "manual", actor or getpass.getuser(), reason)
            click.echo(
                f"run {run.id} {stream}: {run.decision} - {run.decision_reason}"
                + (f" ({run.error})" if run.error else "")
            )
    finally:
        if publisher is not None:
            publisher.close()
        registry.close()
