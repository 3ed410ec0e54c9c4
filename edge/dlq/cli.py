"""``fleetsentry edge dlq``: look at rejected input, payloads opened on this gateway."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import click
import msgspec

from edge import config as edge_config
from edge.cli_options import CONFIG_OPTION
from edge.dlq.errors import DeadLetterError
from edge.dlq.letters import DeadLetters
from edge.dlq.reader import latest
from edge.vault.errors import VaultError
from shared.contracts import DeadLetter


@click.group()
def dlq() -> None:
    """Dead letters (dlq.ingest): rejected input, sealed so only this gateway reads it."""


@dlq.command()
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=20,
    show_default=True,
    help="How many of the latest dead letters.",
)
@click.option(
    "--actor",
    required=True,
    help="Who is looking (recorded in the vault's audit log: payloads are personal).",
)
@CONFIG_OPTION
def show(limit: int, actor: str, config_path: Path | None) -> None:
    """Print the latest dead letters, payloads decrypted, as JSON lines (oldest first)."""
    from edge.vault.setup import open_vault

    cfg = edge_config.load(config_path)
    try:
        # Without the key files nothing was ever sealed here: never create them for reading.
        letters = DeadLetters.load(cfg, create=False)
    except VaultError as exc:
        raise click.ClickException(f"{exc} (is --config this gateway's edge.toml?)") from None
    try:
        records = latest(cfg.kafka, limit)
    except DeadLetterError as exc:
        raise click.ClickException(str(exc)) from None
    with open_vault(cfg) as v:
        v.record_access(actor, "dlq_show", f"{len(records)} dead letters")
    for rec in records:
        click.echo(json.dumps(_shown(letters, rec.offset() or 0, rec.value() or b"")))


def _shown(letters: DeadLetters, offset: int, value: bytes) -> dict[str, Any]:
    try:
        letter = msgspec.json.decode(value, type=DeadLetter)
    except msgspec.DecodeError:
        # Never printed: a letter of an older build holds the payload in the clear.
        return {
            "offset": offset,
            "error": "not a sealed dead letter (written by an older "
            "build? it expires with the topic's retention)",
        }
    out: dict[str, Any] = {
        "offset": offset,
        "received_ts": letter.received_ts,
        "source": letter.source,
        "reason": letter.reason,
        "detail": letter.detail,
        "length": letter.length,
        "count": letter.count,
    }
    try:
        payload = letters.open(letter)
    except DeadLetterError as exc:
        out["error"] = str(exc)
        return out
    try:
        out["payload"] = payload.decode()
    except UnicodeDecodeError:
        out["payload_b64"] = base64.b64encode(payload).decode()
    return out
