"""``fleetsentry cloud signer``: the process holding the model-signing key (``cloud run``
starts it beside the dashboard)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from shared import signing, streams

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cloud.config import CloudConfig
    from cloud.signer.signer import TrainerFactory


def load_key(key_file: Path | None) -> Ed25519PrivateKey:
    """The signing key; a missing one is an error naming `fleetsentry cloud keygen`."""
    try:
        return signing.require_private_key(key_file or signing.dev_private_key_path())
    except signing.KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


def trainer_factory(
    cfg: CloudConfig,
    key: Ed25519PrivateKey,
    publisher: Any,
    epochs: int,
    min_records: int,
    schedule_s: float,
    drift_check_s: float,
    recent_s: float,
) -> TrainerFactory:
    from cloud.trainer_service.source import source_for
    from cloud.trainer_service.trainer_service import TrainerService, settings_from

    settings = settings_from(
        cfg.trainer,
        epochs,
        streams=None,  # every registered stream: the built-in ones and cloud.toml's declared
        min_records=min_records,
        schedule_s=schedule_s,
        drift_check_s=drift_check_s,
        recent_s=recent_s,
    )
    return lambda registry: TrainerService(
        registry, source_for(cfg), key, settings, publisher=publisher
    )


def signer_options(fn: Any) -> Any:
    """The options ``cloud run`` shares with ``cloud signer`` (and passes on to it)."""
    for opt in reversed(
        [
            click.option(
                "--key",
                "key_file",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Ed25519 model-signing key (default: the development "
                "key, ~/.config/fleetsentry/model-signing.key; `fleetsentry cloud keygen "
                "PATH` makes one).",
            ),
            click.option("--no-publish", is_flag=True, help="Change the registry only."),
            click.option("--epochs", default=12, show_default=True),
            click.option("--min-records", default=1000, show_default=True),
            click.option(
                "--schedule",
                "schedule_s",
                default=24 * 3600.0,
                show_default=True,
                help="Retrain a stream whose champion is older than this (seconds).",
            ),
            click.option(
                "--drift-check",
                "drift_check_s",
                default=300.0,
                show_default=True,
                help="Check for drift this often (seconds); also the first back-off "
                "after a failed or kept run.",
            ),
            click.option(
                "--recent",
                "recent_s",
                default=1800.0,
                show_default=True,
                help="Recent window compared with the training window (seconds of event time).",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


@click.command("signer")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="FLEETSENTRY_CLOUD_CONFIG",
    help="cloud.toml (default: settings that work on one machine).",
)
@signer_options
@click.option(
    "--no-schedule",
    is_flag=True,
    help="Carry out operators' requests only: no scheduled or drift retrains.",
)
@click.option(
    "--parent",
    "parent_pid",
    type=int,
    default=None,
    hidden=True,
    help="Stop when this process (`cloud run`) is gone.",
)
def signer(
    config_path: Path | None,
    key_file: Path | None,
    no_publish: bool,
    epochs: int,
    min_records: int,
    schedule_s: float,
    drift_check_s: float,
    recent_s: float,
    no_schedule: bool,
    parent_pid: int | None,
) -> None:
    """Hold the signing key: train, sign, publish, and carry out the dashboard's requests."""
    from cloud import config as cloud_config
    from cloud.publisher import Publisher, Releaser
    from cloud.signer.signer import serve

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    cfg = cloud_config.load(config_path)
    streams.use_declarations(cfg.streams.dir)  # the operator's streams are served too
    key = load_key(key_file)
    publisher = (
        None
        if no_publish
        else Publisher(
            cfg.kafka.login("publisher"),
            Releaser(key, cfg.registry.root, cfg.releases.fleet, cfg.releases.ttl_days * 86_400),
        ).start()
    )
    make = trainer_factory(
        cfg, key, publisher, epochs, min_records, schedule_s, drift_check_s, recent_s
    )
    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if parent_pid is not None:
        threading.Thread(target=_with_parent, args=(parent_pid, stop), daemon=True).start()
    approval = "required" if cfg.trainer.require_approval else "not required"
    click.echo(
        f"fleetsentry signer: key id {signing.key_fingerprint(key)}, registry "
        f"{cfg.registry.root}, operator approval of retrained models {approval}",
        err=True,
    )
    try:
        serve(cfg.registry.root, make, publisher, stop, schedule=not no_schedule)
    finally:
        if publisher is not None:
            publisher.close()


def _with_parent(pid: int, stop: threading.Event) -> None:
    """Set ``stop`` once ``pid`` is no longer our parent: ``cloud run`` may end without a
    chance to stop us (uvicorn re-raises the signal that stopped it), and no signer may
    outlive the dashboard it serves."""
    while not stop.wait(1.0):
        if os.getppid() != pid:
            stop.set()
