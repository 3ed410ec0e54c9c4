"""``fleetsentry cloud store --config cloud.toml``."""

from __future__ import annotations

import signal
from typing import Any

import click

from cloud import config as cloud_config


@click.command("store")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    help="cloud.toml ([kafka] bootstrap and the [store] table).",
)
@click.option(
    "--until-idle",
    type=float,
    default=None,
    help="Exit after this many seconds without a new record (for batch runs).",
)
def store(config_path: str | None, until_idle: float | None) -> None:
    """Write every gateway's replicated topics and the labels into Parquet, deduplicated."""
    from cloud.store.store import Store

    cfg = cloud_config.load(config_path)
    from shared import streams

    streams.use_declarations(cfg.streams.dir)  # declared streams' anon.* and scores.* too
    s = cfg.store
    svc = Store(
        cfg.kafka.login("store"),
        s.root,
        s.group_id,
        s.batch_records,
        s.flush_interval_s,
        s.compression,
    )

    def stop(*_: Any) -> None:
        svc.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    svc.start()
    click.echo(f"Storing from {cfg.kafka.bootstrap} into {s.root} (Ctrl-C stops) ...")
    last = [0]

    def progress(rows: int) -> None:
        if rows != last[0]:
            click.echo(f"  {rows} rows written")
            last[0] = rows

    try:
        rows = svc.run(until_idle_s=until_idle, progress=progress)
    finally:
        svc.close()
    click.echo(f"Stopped; {rows} rows written this run.")
