"""Dry runs: the events a fleet would publish, written to JSON-lines files without a broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
from firmware_sim.fleet import Fleet, FleetStats


def default_labels_path(out: Path) -> Path:
    return out.with_name("labels.jsonl")


def write_dry_run(
    fleet: Fleet,
    out: Path,
    labels_out: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> FleetStats:
    """Write ``{"topic": ..., "payload": {...}}`` lines (publish order) and the label lines.

    The payload object is the exact JSON the vehicle would publish, embedded byte for byte.
    Files are written beside their final name and renamed at the end, so a crash never
    leaves a half-written file that looks complete.
    """
    labels_out = labels_out or default_labels_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels_out.parent.mkdir(parents=True, exist_ok=True)
    tmp_events, tmp_labels = (
        out.with_name(out.name + ".part"),
        labels_out.with_name(labels_out.name + ".part"),
    )
    enc = msgspec.json.Encoder()
    with (
        open(tmp_events, "wb", buffering=1 << 20) as ev,
        open(tmp_labels, "wb", buffering=1 << 16) as lab,
    ):
        while fleet.tick < fleet.settings.ticks:
            batch = fleet.step()
            chunks = []
            for rec in batch:
                chunks.append(b'{"topic":"%s","payload":%s}\n' % (rec.topic.encode(), rec.payload))
                if rec.label is not None:
                    lab.write(enc.encode(rec.label) + b"\n")
            ev.write(b"".join(chunks))
            if progress is not None:
                progress(len(batch))
    tmp_events.replace(out)
    tmp_labels.replace(labels_out)
    return fleet.stats
