"""``fleetsentry sim replay``: what the command does once its options are parsed.

The command itself (options, help) is in :mod:`firmware_sim.cli` beside ``sim run``.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from firmware_sim.acklog import AckLog
from firmware_sim.dryrun import default_labels_path
from firmware_sim.errors import ConnectError
from firmware_sim.live import Progress
from firmware_sim.replay import RebaseMode, Recording, load, top_reasons
from firmware_sim.replay_labels import LabelSet, read_labels, write_labels
from firmware_sim.replay_run import (
    DeviceResult,
    ReplayFleet,
    ReplayRunner,
    device_results,
    write_dry_run,
)
from firmware_sim.session import ConnectSettings
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars
from rich.table import Table

from shared import streams
from shared.errors import ConfigError, FleetsentryError
from shared.streams import StreamSpec

# The bridge's defaults (edge.toml [bridge]): events further ahead of its clock, or older,
# go to the dead-letter topic.
BRIDGE_MAX_FUTURE_SKEW_S = 300.0
BRIDGE_MAX_PAST_AGE_S = 3 * 86_400.0
SUMMARY_DEVICES = 25


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    password: str
    passwords: dict[str, str]
    tls_ca: str | None
    connect_wait_s: float
    drain_timeout_s: float
    register_home: Path | None
    buffer_dir: Path | None
    acked_log: Path | None


def transient_bars(console: Console) -> Bars:
    """Progress bars (description, bar, done of total, time) that vanish when done."""
    return Bars(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def streams_dir(streams_dir: Path | None, config: Path | None) -> Path:
    """The declarations directory: ``--streams-dir``, or ``[streams] dir`` of ``--config``."""
    if streams_dir is not None:
        return streams_dir
    if config is None:
        raise click.UsageError(
            "name the stream declarations: --streams-dir DIR or "
            "--config edge.toml (its [streams] dir)"
        )
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.UsageError(f"cannot read {config}: {exc}") from None
    directory = data.get("streams", {}).get("dir")
    if not isinstance(directory, str) or not directory:
        raise click.UsageError(f"{config} has no [streams] dir naming the declarations")
    return Path(directory).expanduser()


def stream_spec(directory: Path, name: str) -> StreamSpec:
    try:
        streams.use_declarations(directory)
        spec = streams.get(name)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if spec.declaration is None:
        raise click.UsageError(
            f"stream {name!r} is built in: its events come from "
            "`sim run`; replay takes a declared stream"
        )
    return spec


def read_passwords(path: Path) -> tuple[str | None, dict[str, str]]:
    """A password file: one line (every device's password), or a JSON object of device id
    -> password (devices it does not name use --password)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.UsageError(f"cannot read {path}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.UsageError(f"{path}: not a JSON object ({exc})") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise click.UsageError(f"{path}: expected {{device id: password}} strings")
        return None, table
    line = text.strip().splitlines()[0] if text.strip() else ""
    if not line:
        raise click.UsageError(f"{path} is empty")
    return line, {}


def run(
    file: Path,
    stream: str,
    directory: Path,
    fmt: str | None,
    rebase: RebaseMode,
    speed: float | None,
    dry_run: bool,
    out: Path | None,
    labels: Path | None,
    labels_out: Path | None,
    summary_json: Path | None,
    connection: Connection | None,
) -> None:
    console = Console(stderr=True)
    if dry_run and out is None:
        raise click.UsageError("--dry-run needs --out FILE")
    if not dry_run and labels is not None and labels_out is None:
        raise click.UsageError("--labels on a live replay needs --labels-out FILE")
    spec = stream_spec(directory, stream)
    assert spec.declaration is not None
    label_set = read_labels(labels, spec.declaration) if labels is not None else None
    now = time.time()
    with transient_bars(console) as bars:
        task = bars.add_task("rows read", total=None)
        recording = load(
            file,
            spec,
            rebase,
            now,
            fmt,
            on_accepted=label_set.match if label_set is not None else None,
            on_row=lambda n: bars.update(task, completed=n),
        )
    rejected = sum(recording.rejected.values())
    console.print(
        f"{file}: {recording.rows:,} rows, {recording.accepted:,} events of "
        f"{len(recording.devices):,} devices, {rejected:,} rejected; " + _time_note(recording)
    )
    if dry_run:
        assert out is not None
        _dry(
            recording, out, label_set, labels_out or default_labels_path(out), console, summary_json
        )
        return
    assert connection is not None
    _warn_bridge_window(recording, speed, console)
    _live(recording, speed, connection, label_set, labels_out, console, summary_json)


def _time_note(rec: Recording) -> str:
    if rec.first_s is None:
        return "no valid time"
    span = (rec.last_s or rec.first_s) - rec.first_s
    shift = {"now": "its first time now", "end": "its last time now", "none": "times as recorded"}[
        rec.rebase.mode
    ]
    return f"{span:,.1f} s recorded, replayed with {shift} (shift {rec.rebase.offset_s:+,.3f} s)"


def _warn_bridge_window(rec: Recording, speed: float | None, console: Console) -> None:
    """Say so when the bridge (with its default limits) will refuse what is replayed."""
    if rec.first_s is None or rec.last_s is None:
        return
    now = time.time()
    first, last = rec.first_s + rec.rebase.offset_s, rec.last_s + rec.rebase.offset_s
    span = last - first
    # The last event leaves about span / speed after the first (at once at full speed).
    lead = (last - now) - (0.0 if speed is None else span / speed)
    if lead > BRIDGE_MAX_FUTURE_SKEW_S:
        console.print(
            f"[yellow]warning:[/] the last events carry times up to {lead:,.0f} s "
            "ahead of when they are sent; a gateway's bridge refuses events more "
            f"than {BRIDGE_MAX_FUTURE_SKEW_S:g} s ahead of its clock "
            "(future_timestamp). Use --rebase end (every event in the past), or a "
            "lower --speed."
        )
    if now - first > BRIDGE_MAX_PAST_AGE_S:
        console.print(
            f"[yellow]warning:[/] the first events are {(now - first) / 86400:,.1f} "
            "days old; a gateway's bridge refuses events more than "
            f"{BRIDGE_MAX_PAST_AGE_S / 86400:g} days old. Use --rebase now or end."
        )


def _labels_done(
    label_set: LabelSet | None, rec: Recording, path: Path, console: Console
) -> dict[str, Any]:
    if label_set is None:
        return {}
    labels = label_set.labels(rec.rebase.offset_s)
    write_labels(path, labels)
    unmatched = label_set.unmatched
    console.print(
        f"{len(labels):,} labelled events written to {path}"
        + (
            f"; {len(unmatched):,} label rows matched no replayed event (first: "
            f"{', '.join(unmatched[:3])})"
            if unmatched
            else ""
        )
    )
    return {"labels": len(labels), "labels_out": str(path), "labels_unmatched": len(unmatched)}


def _dry(
    rec: Recording,
    out: Path,
    label_set: LabelSet | None,
    labels_out: Path,
    console: Console,
    summary_json: Path | None,
) -> None:
    with transient_bars(console) as bars:
        task = bars.add_task("events written", total=rec.accepted)
        written = write_dry_run(rec, out, lambda n: bars.advance(task, n))
    extra = _labels_done(label_set, rec, labels_out, console)
    results = device_results(rec, replayed=written)
    _finish(
        rec,
        results,
        {"out": str(out), **extra},
        console,
        summary_json,
        sent=sum(written.values()),
        what="written",
    )


def _live(
    rec: Recording,
    speed: float | None,
    conn: Connection,
    label_set: LabelSet | None,
    labels_out: Path | None,
    console: Console,
    summary_json: Path | None,
) -> None:
    fleet = ReplayFleet(rec, speed)
    if not fleet.rows:
        _finish(
            rec,
            device_results(rec, fleet, []),
            {},
            console,
            summary_json,
            sent=0,
            what="acknowledged",
        )
        return
    if conn.register_home is not None:
        _register(fleet, conn, conn.register_home, console)
    settings = ConnectSettings(
        host=conn.host, port=conn.port, password=conn.password, tls_ca=conn.tls_ca
    )
    with tempfile.TemporaryDirectory(prefix="fleetsentry-replay-") as tmp:
        runner = ReplayRunner(
            fleet,
            settings,
            conn.buffer_dir or Path(tmp),
            passwords=conn.passwords,
            connect_wait_s=conn.connect_wait_s,
            drain_timeout_s=conn.drain_timeout_s,
            ack_log=AckLog(conn.acked_log) if conn.acked_log else None,
        )
        try:
            result = _drive(runner, fleet, console)
        except ConnectError as exc:
            raise click.ClickException(str(exc)) from None
    extra = _labels_done(label_set, rec, labels_out, console) if labels_out else {}
    extra |= _live_figures(result, fleet, speed)
    _finish(
        rec,
        device_results(rec, fleet, runner.sessions),
        extra,
        console,
        summary_json,
        sent=result.progress.acked,
        what="acknowledged",
    )


def _live_figures(result: Any, fleet: ReplayFleet, speed: float | None) -> dict[str, Any]:
    """A live replay's pace, cost and what it left, for its summary."""
    p = result.progress
    figures: dict[str, Any] = {
        "speed": "max" if speed is None else speed,
        "replay_s": round(fleet.replay_s, 3),
        "elapsed_s": round(p.elapsed_s, 2),
        "drained": result.drained,
        "events_per_s": round(p.acked / max(p.elapsed_s, 1e-9)),
        "cpu_us_per_event": round(p.cpu_s / max(p.acked, 1) * 1e6, 1),
        "left_unsent": p.buffered,
    }
    if result.connect_errors:
        figures["connect_errors"] = result.connect_errors
    return figures


def _register(fleet: ReplayFleet, conn: Connection, home: Path, console: Console) -> None:
    """Every device's login registered with the broker whose home is ``home``."""
    from shared.infra.mosquitto import Mosquitto

    logins = {v.vin: conn.passwords.get(v.vin, conn.password) for v in fleet.vehicles}
    try:
        n = Mosquitto(home=home, port=0).register_vehicles(logins)
    except FleetsentryError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(
        f"registered {len(logins):,} devices with the broker in "
        f"{home} ({n:,} device logins in total)"
    )


def _drive(runner: ReplayRunner, fleet: ReplayFleet, console: Console) -> Any:
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    try:
        with Bars(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bars:
            sent = bars.add_task("replayed", total=fleet.total, note="")
            acked = bars.add_task("acknowledged", total=fleet.total, note="")

            def show(p: Progress) -> None:
                bars.update(
                    sent,
                    completed=p.generated,
                    note=f"{p.connected:,}/{p.vehicles:,} connected, {p.phase}",
                )
                bars.update(acked, completed=p.acked, note=f"{p.events_per_s:,.0f}/s")

            runner.on_progress = show
            result = runner.run()
            show(result.progress)
            return result
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish(
    rec: Recording,
    results: list[DeviceResult],
    extra: dict[str, Any],
    console: Console,
    summary_json: Path | None,
    sent: int,
    what: str,
) -> None:
    live = any(r.acked is not None for r in results) or what == "acknowledged"
    totals = Counter[str]()
    for r in results:
        totals.update(r.rejected)
    summary = {
        "file": str(rec.path),
        "stream": rec.stream.name,
        "rows": rec.rows,
        "devices": len(rec.devices),
        "accepted": rec.accepted,
        "replayed": sum(r.replayed for r in results),
        what: sent,
        "rejected": sum(totals.values()),
        "top_rejections": top_reasons(totals, rec.first_row, 5),
        **extra,
        "per_device": [
            {
                "device": r.device,
                "rows": r.rows,
                "replayed": r.replayed,
                **({"acknowledged": r.acked, "unsent": r.unsent} if r.acked is not None else {}),
                "rejected": r.rejected_n,
                "reasons": dict(r.rejected.most_common(5)),
                **({"login_error": r.login_error} if r.login_error else {}),
            }
            for r in results
        ],
    }
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(_table(results, rec, live))
    for key in (
        "out",
        "speed",
        "replay_s",
        "elapsed_s",
        "events_per_s",
        "cpu_us_per_event",
        "left_unsent",
        "connect_errors",
    ):
        if key in extra:
            console.print(f"{key}: {extra[key]}")
    if sent == 0:
        raise click.ClickException(
            f"nothing was {what}: {rec.accepted:,} of {rec.rows:,} "
            "rows passed the checks"
            + (f"; top reason: {top_reasons(totals, rec.first_row, 1)[0]}" if totals else "")
        )


def _table(results: list[DeviceResult], rec: Recording, live: bool) -> Table:
    t = Table(title=f"replay of {rec.path.name} as {rec.stream.name}")
    t.add_column("device")
    t.add_column("rows", justify="right")
    t.add_column("replayed", justify="right")
    if live:
        t.add_column("acknowledged", justify="right")
        t.add_column("unsent", justify="right")
    t.add_column("rejected", justify="right")
    t.add_column("top rejection reasons")
    # Devices with something to look at first (rejections, then unsent), then by name.
    ordered = sorted(results, key=lambda r: (-r.rejected_n, -r.unsent, r.device))
    for r in ordered[:SUMMARY_DEVICES]:
        notes = top_reasons(r.rejected, rec.first_row, 3)
        if r.login_error:
            notes.insert(0, f"never connected: {r.login_error}")
        t.add_row(
            r.device,
            f"{r.rows:,}",
            f"{r.replayed:,}",
            *([f"{r.acked or 0:,}", f"{r.unsent:,}"] if live else []),
            f"{r.rejected_n:,}",
            "; ".join(notes),
        )
    if len(ordered) > SUMMARY_DEVICES:
        t.add_row(
            f"… {len(ordered) - SUMMARY_DEVICES:,} more devices",
            "",
            "",
            *(["", ""] if live else []),
            "",
            "(all of them: --summary-json)",
        )
    totals: Counter[str] = Counter()
    for r in results:
        totals.update(r.rejected)
    t.add_section()
    t.add_row(
        f"total ({len(rec.devices):,} devices)",
        f"{rec.rows:,}",
        f"{sum(r.replayed for r in results):,}",
        *(
            [f"{sum(r.acked or 0 for r in results):,}", f"{sum(r.unsent for r in results):,}"]
            if live
            else []
        ),
        f"{sum(totals.values()):,}",
        "; ".join(top_reasons(totals, rec.first_row, 3)),
    )
    return t
