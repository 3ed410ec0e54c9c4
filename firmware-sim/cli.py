"""``fleetsentry sim``: run a simulated fleet live against MQTT, or dry to files."""

from __future__ import annotations

import functools
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from firmware_sim.acklog import AckLog
from firmware_sim.dryrun import default_labels_path, write_dry_run
from firmware_sim.errors import ConnectError, SimError
from firmware_sim.fleet import Fleet
from firmware_sim.labels import LabelFeed
from firmware_sim.live import LiveResult, LiveRunner, Progress
from firmware_sim.replay import ReplayError
from firmware_sim.replay_cli import Connection, read_passwords, streams_dir, transient_bars
from firmware_sim.replay_cli import run as run_replay
from firmware_sim.session import ConnectSettings
from firmware_sim.settings import (
    FAULT_KINDS,
    FRAUD_KINDS,
    SimSettings,
    default_fault_rates,
    default_fraud_rates,
)
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shared.contracts import Label, encode
from shared.errors import ConfigError
from shared.kafka_config import LABELS_USER, Target, cloud_login

PASSWORD_ENV = "FLEETSENTRY_SIM_PASSWORD"
DEFAULT_PASSWORD = "fleetsentry-sim"


def _rates(
    pairs: tuple[str, ...],
    defaults: dict[str, float],
    scale: float,
    kinds: tuple[str, ...],
    option: str,
) -> dict[str, float]:
    rates = {k: v * scale for k, v in defaults.items()}
    for pair in pairs:
        kind, sep, value = pair.partition("=")
        if not sep or kind not in kinds:
            raise click.BadParameter(
                f"expected KIND=RATE with KIND one of {', '.join(kinds)}", param_hint=option
            )
        try:
            rates[kind] = float(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number", param_hint=option) from None
    return rates


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:1883", param_hint="--mqtt")
    return host, int(port)


def _apply(f: Any, *options: Any) -> Any:
    """``f`` with ``options`` applied as if stacked on it in this order (the first on top)."""
    for option in reversed(options):
        f = option(f)
    return f


def fleet_options(f: Any) -> Any:
    """The fleet: its size, pace, length and seed."""
    return _apply(
        f,
        click.option("--vehicles", default=100, show_default=True, help="Fleet size."),
        click.option(
            "--rate",
            "rate_hz",
            default=1.0,
            show_default=True,
            help="Telemetry frames per vehicle per second.",
        ),
        click.option(
            "--duration",
            "duration_s",
            default=600.0,
            show_default=True,
            help="Seconds of simulated driving.",
        ),
        click.option("--seed", default=0, show_default=True, help="Same seed, same events."),
    )


def anomaly_options(f: Any) -> Any:
    """The faults' and frauds' rates, and how often drivers pay."""
    return _apply(
        f,
        click.option(
            "--fault-rate",
            "fault_pairs",
            multiple=True,
            metavar="KIND=RATE",
            help="Episodes per driving vehicle-hour for one fault kind.",
        ),
        click.option(
            "--fraud-rate",
            "fraud_pairs",
            multiple=True,
            metavar="KIND=RATE",
            help="Fraud episodes per legitimate payment for one kind.",
        ),
        click.option(
            "--fault-scale",
            default=1.0,
            show_default=True,
            help="Multiply every default fault rate.",
        ),
        click.option(
            "--fraud-scale",
            default=1.0,
            show_default=True,
            help="Multiply every default fraud rate.",
        ),
        click.option(
            "--payment-rate", default=1.0, show_default=True, help="Multiply how often drivers pay."
        ),
    )


def drift_options(f: Any) -> Any:
    """A change of normal behaviour part of the way in."""
    return _apply(
        f,
        click.option(
            "--drift",
            multiple=True,
            type=click.Choice(["new_model", "firmware_rollout"]),
            help="Shift normal behaviour mid-run (repeatable).",
        ),
        click.option(
            "--drift-at",
            "drift_at_s",
            type=float,
            default=None,
            help="Seconds into the run when drift starts (default: half way).",
        ),
        click.option(
            "--drift-fraction",
            type=float,
            default=SimSettings.drift_fraction,
            show_default=True,
            help="Share of the fleet the drift touches (new vehicles added, or firmware updated).",
        ),
    )


def settings_options(f: Any) -> Any:
    """Every option of the simulated fleet's settings (see :func:`build_settings`)."""
    return _apply(
        f,
        fleet_options,
        anomaly_options,
        drift_options,
        click.option("--city", "cities", multiple=True, help="Limit the fleet to these cities."),
    )


def build_settings(kw: dict[str, Any], start_ts: float | None) -> SimSettings:
    try:
        return SimSettings(
            vehicles=kw["vehicles"],
            rate_hz=kw["rate_hz"],
            duration_s=kw["duration_s"],
            seed=kw["seed"],
            start_ts=start_ts,
            payment_rate=kw["payment_rate"],
            fault_rates=_rates(
                kw["fault_pairs"],
                default_fault_rates(),
                kw["fault_scale"],
                FAULT_KINDS,
                "--fault-rate",
            ),
            fraud_rates=_rates(
                kw["fraud_pairs"],
                default_fraud_rates(),
                kw["fraud_scale"],
                FRAUD_KINDS,
                "--fraud-rate",
            ),
            drift=tuple(kw["drift"]),
            drift_at_s=kw["drift_at_s"],
            drift_fraction=kw["drift_fraction"],
            cities=tuple(kw["cities"]),
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def labels_kafka_options(f: Any) -> Any:
    """--labels-kafka and how to log in there, handed to the command as ``labels_login``
    (None without --labels-kafka)."""

    @functools.wraps(f)
    def command(
        *args: Any,
        labels_kafka: str | None,
        labels_kafka_security: str,
        labels_kafka_credentials: Path | None,
        labels_kafka_ca: Path | None,
        **kw: Any,
    ) -> Any:
        login = (
            cloud_login(
                labels_kafka,
                LABELS_USER,
                security=labels_kafka_security,
                credentials_file=labels_kafka_credentials,
                ca_file=labels_kafka_ca,
            )
            if labels_kafka
            else None
        )
        return f(*args, labels_login=login, **kw)

    return _apply(
        command,
        click.option(
            "--labels-kafka",
            metavar="BOOTSTRAP",
            help="Also produce the labels to the `labels` topic of the cloud Kafka there: "
            "live runs while they go (see --label-delay), dry runs all at the end. "
            "Logs in as fleetsentry-labels over TLS (see --labels-kafka-security).",
        ),
        click.option(
            "--labels-kafka-security",
            type=click.Choice(["sasl_ssl", "none"]),
            default="sasl_ssl",
            show_default=True,
            help="none: a development Kafka without TLS or logins.",
        ),
        click.option(
            "--labels-kafka-credentials",
            type=click.Path(dir_okay=False, path_type=Path),
            help="JSON {user: password} holding fleetsentry-labels' password (default: "
            "the one `fleetsentry infra up` wrote for the cloud Kafka).",
        ),
        click.option(
            "--labels-kafka-ca",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The cloud Kafka's CA certificate (default: the one `infra up` made).",
        ),
    )


def session_options(devices: str, run: str) -> Any:
    """The options of the MQTT sessions that ``devices`` (vehicles, devices) open for a live
    ``run`` (run, replay): broker, password, TLS, how long to connect, logins to register
    first, where the outbox lives."""
    device = devices.removesuffix("s")
    return lambda f: _apply(
        f,
        click.option(
            "--mqtt",
            "mqtt_addr",
            default="127.0.0.1:1883",
            show_default=True,
            help=f"Broker HOST:PORT (live {run})."
            + (" Devices log in with their id as user and client id." if run == "replay" else ""),
        ),
        click.option(
            "--password",
            envvar=PASSWORD_ENV,
            default=DEFAULT_PASSWORD,
            show_default=False,
            help=f"{devices.capitalize()}' MQTT password (env {PASSWORD_ENV}).",
        ),
        click.option(
            "--tls-ca",
            type=click.Path(exists=True, dir_okay=False),
            help="CA file: connect with TLS (--mqtt must name the broker's TLS port).",
        ),
        click.option(
            "--connect-wait",
            "connect_wait_s",
            default=30.0,
            show_default=True,
            help=f"Seconds to bring the {devices} online; the {run} fails if none connects.",
        ),
        click.option(
            "--register-with",
            "register_home",
            type=click.Path(path_type=Path),
            help=f"Mosquitto home dir: register every {device}'s login there first.",
        ),
        click.option(
            "--buffer-dir",
            type=click.Path(path_type=Path),
            help="Where the on-disk outbox lives (default: a temp dir).",
        ),
    )


@click.group()
def sim() -> None:
    """Simulated vehicles: telemetry, payments, injected faults and fraud."""


@sim.command()
@settings_options
@click.option("--dry-run", is_flag=True, help="Write events to --out instead of publishing.")
@click.option("--out", type=click.Path(path_type=Path), help="Events file (dry run).")
@click.option(
    "--labels-out",
    type=click.Path(path_type=Path),
    help="Labels file (dry run default: labels.jsonl beside the events file; "
    "live runs write it at the end when given).",
)
@labels_kafka_options
@click.option(
    "--label-delay",
    "label_delay_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0, 86_400),
    help="Live runs: seconds of run clock after an episode ends before its labels "
    "reach --labels-kafka (a workshop report, a chargeback); what is still "
    "pending at the end goes then. Dry runs have no clock: all at the end.",
)
@session_options("vehicles", "run")
@click.option(
    "--decisions-out",
    type=click.Path(path_type=Path),
    help="Write payment decisions the vehicles obeyed (declines, holds) here.",
)
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path),
    help="Also write the end-of-run summary as JSON.",
)
@click.option(
    "--acked-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Live runs: write every event the broker acknowledged (PUBACK) here, one "
    'JSON line each: {"event_id", "vin", "stream", "ts"}.',
)
@click.option(
    "--linger",
    "linger_s",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 86_400),
    help="Live runs: seconds the vehicles stay online after their events are "
    "drained, receiving commands (decisions on the last payments); "
    "SIGTERM/Ctrl-C ends it early. SIGUSR1 ends the drive early (then the "
    "drain and the linger).",
)
@click.option(
    "--start-ts",
    type=float,
    default=None,
    help="Device clock at the start (default: fixed for dry runs, now for live).",
)
def run(
    dry_run: bool,
    out: Path | None,
    labels_out: Path | None,
    labels_login: Target | None,
    label_delay_s: float,
    mqtt_addr: str,
    password: str,
    tls_ca: str | None,
    connect_wait_s: float,
    register_home: Path | None,
    buffer_dir: Path | None,
    decisions_out: Path | None,
    summary_json: Path | None,
    start_ts: float | None,
    acked_log: Path | None,
    linger_s: float,
    **kw: Any,
) -> None:
    """Run a fleet: live against MQTT, or --dry-run to files."""
    console = Console(stderr=True)
    if dry_run:
        if out is None:
            raise click.UsageError("--dry-run needs --out FILE")
        settings = build_settings(kw, start_ts or SimSettings.start_ts)
        _dry(settings, out, labels_out, labels_login, console, summary_json)
        return
    settings = build_settings(kw, start_ts or round(time.time(), 3))
    fleet = Fleet(settings)
    if register_home is not None:
        register(fleet, register_home, password, console)
    host, port = _host_port(mqtt_addr)
    conf = ConnectSettings(host=host, port=port, password=password, tls_ca=tls_ca)
    feed = _feed(labels_login, label_delay_s) if labels_login else None
    with tempfile.TemporaryDirectory(prefix="fleetsentry-sim-") as tmp:
        runner = LiveRunner(
            fleet,
            conf,
            buffer_dir or Path(tmp),
            connect_wait_s=connect_wait_s,
            labels=feed,
            ack_log=AckLog(acked_log) if acked_log else None,
            linger_s=linger_s,
            on_drained=lambda p: _drained(console, p, linger_s),
        )
        try:
            result = _live(runner, console)
        except ConnectError as exc:
            raise click.ClickException(str(exc)) from None
    summary = _results(result, fleet, feed, decisions_out, labels_out)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(_summary_table(summary))


def _results(
    result: LiveResult,
    fleet: Fleet,
    feed: LabelFeed | None,
    decisions_out: Path | None,
    labels_out: Path | None,
) -> dict[str, Any]:
    """A live run's summary, once its decisions and labels are written where asked (the
    labels still pending in ``feed`` produced)."""
    summary = result.summary()
    if decisions_out is not None:
        decisions_out.write_text("".join(json.dumps(d) + "\n" for d in result.declines))
    if labels_out is not None:
        labels_out.write_bytes(b"".join(encode(lab) + b"\n" for lab in fleet.labels))
    if feed is not None:
        feed.collect(fleet.labels)  # the last tick's labels: the loop may have ended before
        try:
            summary["labels_produced"] = feed.close()
        except SimError as exc:
            raise click.ClickException(str(exc)) from None
    return summary


def _drained(console: Console, p: Progress, linger_s: float) -> None:
    # One line a supervising script can wait for: everything acknowledged is in --acked-log.
    console.print(
        f"fleet drained: {p.acked} events acknowledged, {p.buffered} left"
        + (f"; staying online up to {linger_s:g} s for commands" if linger_s else "")
    )


def _produce(bootstrap: Target, labels: list[Label]) -> int:
    try:
        return produce_labels(bootstrap, labels)
    except SimError as exc:
        raise click.ClickException(str(exc)) from None


def _feed(bootstrap: Target, delay_s: float) -> LabelFeed:
    try:
        return LabelFeed(bootstrap, delay_s)
    except SimError as exc:
        raise click.ClickException(str(exc)) from None


def produce_labels(bootstrap: Target, labels: list[Label]) -> int:
    """Ground truth to Kafka's ``labels`` topic, keyed by event id (chargebacks, reports)."""
    feed = LabelFeed(bootstrap, delay_s=0.0)
    feed.collect(labels)
    return feed.close()


def register(fleet: Fleet, home: Path, password: str, console: Console) -> None:
    from shared.infra.mosquitto import Mosquitto

    n = Mosquitto(home=home, port=0).register_vehicles(fleet.credentials(password))
    console.print(
        f"registered {len(fleet.vehicles)} vehicles with the broker in {home} "
        f"({n} vehicle logins in total)"
    )


@sim.command("register")
@settings_options
@click.option(
    "--mosquitto-home",
    type=click.Path(path_type=Path),
    required=True,
    help="The broker's home dir (holds its logins, config and mosquitto.pid).",
)
@click.option("--password", envvar=PASSWORD_ENV, default=DEFAULT_PASSWORD)
def register_cmd(mosquitto_home: Path, password: str, **kw: Any) -> None:
    """Register the VINs a run with these settings will use (a running broker takes them at once)."""
    fleet = Fleet(build_settings(kw, None))
    register(fleet, mosquitto_home, password, Console(stderr=True))


def _dry(
    settings: SimSettings,
    out: Path,
    labels_out: Path | None,
    labels_kafka: Target | None,
    console: Console,
    summary_json: Path | None,
) -> None:

    fleet = Fleet(settings)
    total = settings.ticks
    t0, c0 = time.perf_counter(), time.process_time()
    with transient_bars(console) as bar:
        task = bar.add_task("ticks", total=total)
        stats = write_dry_run(fleet, out, labels_out, lambda _n: bar.advance(task))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n = stats.telemetry + stats.payments
    # Per CPU-second too: on a shared machine wall time says more about the neighbours.
    summary = {
        "events": n,
        "labels": len(fleet.labels),
        "events_per_s": round(n / elapsed),
        "events_per_cpu_s": round(n / max(cpu, 1e-9)),
        "out": str(out),
        "labels_out": str(labels_out or default_labels_path(out)),
        **stats.as_dict(),
    }
    if labels_kafka:
        summary["labels_produced"] = _produce(labels_kafka, fleet.labels)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(_summary_table(summary))


def _live(runner: LiveRunner, console: Console) -> Any:
    def table(p: Progress) -> Table:
        t = Table(title=f"fleet: {p.phase}", show_header=False)
        t.add_row("connected", f"{p.connected}/{p.vehicles}")
        t.add_row("events/s (acked)", f"{p.events_per_s:,.0f}")
        t.add_row("generated / acked", f"{p.generated:,} / {p.acked:,}")
        t.add_row("buffered (memory, disk, in flight)", f"{p.buffered:,}")
        t.add_row("dropped (outbox full)", f"{p.dropped:,}")
        t.add_row("faults / frauds injected", f"{p.faults} / {p.frauds}")
        t.add_row("payments declined by the edge", f"{p.declines}")
        if runner.labels is not None:
            t.add_row(
                "labels delivered / waiting", f"{p.labels_delivered:,} / {p.labels_pending:,}"
            )
        if p.connect_errors:
            t.add_row("failed connects", f"{p.connect_errors:,} (last: {p.last_connect_error})")
        t.add_row("elapsed", f"{p.elapsed_s:,.0f} s")
        return t

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    # A supervising script ends the drive without ending the linger after it.
    signal.signal(signal.SIGUSR1, lambda *_: runner.finish())
    try:
        with Live(
            table(runner.progress),
            console=console,
            refresh_per_second=2,
            transient=not console.is_terminal,
        ) as live:
            runner.on_progress = lambda p: live.update(table(p))
            return runner.run()
    finally:
        signal.signal(signal.SIGINT, previous)


def _summary_table(summary: dict[str, Any]) -> Table:
    t = Table(title="summary", show_header=False)
    for k, v in summary.items():
        t.add_row(k, json.dumps(v) if isinstance(v, dict) else str(v))
    return t


class _Speed(click.ParamType):
    name = "FACTOR|max"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | None:
        if value is None or (isinstance(value, str) and value.lower() == "max"):
            return None
        try:
            factor = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor 'max'", param, ctx)
        if not factor > 0 or factor == float("inf"):
            self.fail("must be a positive number, or 'max'", param, ctx)
        return factor


@sim.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--stream",
    "stream_name",
    required=True,
    help="The declared stream the rows belong to (columns = its field names).",
)
@click.option(
    "--streams-dir",
    "streams_dir_opt",
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory of stream declarations (*.toml).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Or an edge.toml / cloud.toml whose [streams] dir names it.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl", "parquet"]),
    help="The file's format (default: from its suffix).",
)
@click.option(
    "--rebase",
    type=click.Choice(["end", "now", "none"]),
    default="end",
    show_default=True,
    help="end: the recording's last time becomes now (every event in the past, "
    "as the bridge wants at any speed); now: its first time does (events "
    "ahead of the clock unless replayed in real time); none: times as "
    "recorded. Relative timing is kept either way.",
)
@click.option(
    "--speed",
    type=_Speed(),
    default="1",
    show_default=True,
    help="Replay speed: 10 = ten times faster than recorded; max = as fast as "
    "the broker acknowledges.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write the events to --out (JSON lines, as `sim run --dry-run`) instead of publishing.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Events file (dry run)."
)
@click.option(
    "--labels",
    "labels_in",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The recording's labels (CSV or JSON lines): event_id,kind or device,start,end,kind rows.",
)
@click.option(
    "--labels-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the labels go as Label JSON lines (dry run default: labels.jsonl beside --out).",
)
@session_options("devices", "replay")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file holding the devices' password (one line), or a JSON object of "
    "device id -> password.",
)
@click.option(
    "--drain-timeout",
    "drain_timeout_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0, 86_400),
    help="Seconds to wait for the last acknowledgements.",
)
@click.option(
    "--acked-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every event the broker acknowledged here (JSON lines).",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the summary, every device included, as JSON.",
)
def replay(
    file: Path, stream_name: str, streams_dir_opt: Path | None, config_path: Path | None, **kw: Any
) -> None:
    """Replay recorded rows of a declared stream as live devices (or --dry-run to a file).

    FILE is CSV, JSON lines or Parquet; its columns are the stream's field names. Rows are
    converted to the declared types and checked with the stream's event contract; a row that
    fails is counted with its reason and not sent. Each device is one MQTT 5 session (QoS 1,
    persistent session, last will), its rows in file order at the recorded pace times
    --speed. See docs/replay.md.
    """
    directory = streams_dir(streams_dir_opt, config_path)
    password: str = kw.pop("password")
    passwords: dict[str, str] = {}
    password_file = kw.pop("password_file")
    if password_file is not None:
        one, passwords = read_passwords(password_file)
        password = one or password
    host, port = _host_port(kw.pop("mqtt_addr"))
    connection = Connection(
        host=host,
        port=port,
        password=password,
        passwords=passwords,
        tls_ca=kw.pop("tls_ca"),
        connect_wait_s=kw.pop("connect_wait_s"),
        drain_timeout_s=kw.pop("drain_timeout_s"),
        register_home=kw.pop("register_home"),
        buffer_dir=kw.pop("buffer_dir"),
        acked_log=kw.pop("acked_log"),
    )
    try:
        run_replay(
            file,
            stream_name,
            directory,
            kw["fmt"],
            kw["rebase"],
            kw["speed"],
            kw["dry_run"],
            kw["out"],
            kw["labels_in"],
            kw["labels_out"],
            kw["summary_json"],
            connection,
        )
    except (ReplayError, SimError) as exc:
        raise click.ClickException(str(exc)) from None
