"""``fleetsentry demo``: the whole loop on one machine, printing what flows where as it runs.

Two gateways (each its own edge Kafka, Mosquitto, MirrorMaker 2 and ``fleetsentry edge run``),
one cloud (3-broker Kafka, store, trainer service and dashboard) and a simulated fleet per
gateway. The demo drives the other commands as processes and reads Kafka offsets for its
summary, so it imports no edge or cloud code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import tomli_w

from shared import signing, streams, topics
from shared.demo_loop import LoopWatcher
from shared.infra.cli import infra_options, print_status, settings_from
from shared.infra.files import write_private
from shared.infra.mirror import Mirror
from shared.infra.stack import InfraSettings, Stack
from shared.kafka_config import DASHBOARD_USER, Target, client_config
from shared.process_group import ProcessGroup

VEHICLE_PASSWORD = "demo-vehicle"
DASHBOARD_PORT = 8600
# Labels reach the cloud half a minute after their episode ends: late, as a workshop report
# or a chargeback is, yet soon enough that a ten-minute demo has labels to train on.
LABEL_DELAY_S = 30.0
# Gateway 2's fleet changes this far into the run (a new vehicle model joins, a firmware
# rollout reaches part of the fleet): early enough that the drift is plain well before the
# fleets stop; the run follows once the holdout has two labelled episodes (in a short run with
# few vehicles, only when the fleets stop and every label is sent).
# Both kinds: the features measure coolant and tyres against each model's own specification,
# so a new model alone barely moves the baseline's alert rate (offline, 60 vehicles: 0.4-0.9 %
# in its first 4 minutes, under the 1.08 % that is drift); with the rollout, 1.4-3.2 %.
DRIFT_AT = 0.3
# Share of gateway 2's fleet the change touches: the new model joins as half as many vehicles
# again, and the rollout reaches half of the others (in the shortened test run, 60 vehicles
# for 6 minutes, a third left edge-2's false-alert rate at 1.0 %, under the 1.08 % that is
# drift, once every label had arrived).
DRIFT_FRACTION = 0.5
# The trainer checks for drift this often (seconds), and backs off from a failed or kept run
# for as long, doubling.
DRIFT_CHECK_S = 30.0
# After the fleets stop, wait at most this long for the drift run (a drift seen but waiting for
# labels: the simulators send the labels of episodes still running when they stop; a run in
# progress; the retry after one that kept the champion or failed) and the gateways' switch.
FINISH_S = 240.0
# A replicated partition MirrorMaker has drained still shows this many offsets behind: the
# producers' transaction markers.
MARKER_SLACK = 2


@dataclass
class Gateway:
    edge_id: str
    stack: Stack
    config: Path
    mirror: Mirror
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _fleetsentry() -> list[str]:
    exe = shutil.which("fleetsentry")
    return [exe] if exe else [sys.executable, "-m", "shared.cli"]


def _edge_toml(
    gw_id: str,
    stack: Stack,
    data_dir: Path,
    metrics_port: int,
    public_key: Path,
    fleet_secret: Path | None = None,
) -> str:
    """A gateway's edge.toml (``fleet_secret``: the fleet's shared secret file; default the
    gateway's own, made in its data_dir)."""
    return tomli_w.dumps(
        {
            "edge_id": gw_id,
            "data_dir": str(data_dir),
            "kafka": {
                "bootstrap": stack.edge.bootstrap,
                "credentials_file": str(stack.edge.credentials_path),
            },
            "mqtt": {
                "host": stack.mqtt.host,
                "port": int(stack.mqtt.port),
                "credentials_file": str(stack.mqtt.credentials_path),
            },
            "metrics": {"base_port": int(metrics_port)},
            "scorer": {"public_key": str(public_key)},
            **({"vault": {"fleet_secret_file": str(fleet_secret)}} if fleet_secret else {}),
        }
    )


def _cloud_toml(stack: Stack, state: Path, port: int) -> str:
    return tomli_w.dumps(
        {
            "kafka": {
                "bootstrap": stack.cloud.bootstrap,
                "credentials_file": str(stack.cloud.credentials_path),
                "ca_file": str(stack.cloud.tls_files.ca_file),
            },
            "registry": {"root": str(state / "registry")},
            "store": {"root": str(state / "store")},
            "trainer": {"source": "store", "split": "vehicle"},
            "dashboard": {"port": int(port), "state_dir": str(state)},
        }
    )


def _second_gateway(settings: InfraSettings) -> Stack:
    """Gateway 2's own edge Kafka and Mosquitto, beside the first on shifted ports."""
    s2 = InfraSettings(
        home=settings.home / "gateway-2",
        host=settings.host,
        edge_port=settings.edge_port + 200,
        edge_controller_port=settings.edge_controller_port + 200,
        mqtt_port=settings.mqtt_port + 1,
        cloud_ports=settings.cloud_ports,
        cloud_controller_ports=settings.cloud_controller_ports,
        kafka_heap=settings.kafka_heap,
    )
    return Stack(s2, quiet=True)


def _offsets(target: Target, names: list[str]) -> dict[str, int]:
    """Records per topic as offsets (transactional topics count their commit markers too)."""
    from confluent_kafka import Consumer

    from shared.kafka_read import watermarks

    # log_level 2: a broker not yet answering is a summary line of zeros, not an error log.
    c = Consumer(
        client_config(
            target,
            {"group.id": "fleetsentry-demo-summary", "enable.auto.commit": False, "log_level": 2},
        )
    )
    out: dict[str, int] = {}
    try:
        meta = c.list_topics(timeout=5)
        for name in names:
            t = meta.topics.get(name)
            if t is None:
                out[name] = 0
                continue
            ends = watermarks(c, name, t.partitions, timeout=5)
            out[name] = sum(max(0, hi - lo) for lo, hi in ends.values())
    except Exception:  # noqa: BLE001 - a summary line must never stop the demo
        pass
    finally:
        c.close()
    return out


def _behind(gateways: list[Gateway]) -> dict[str, int]:
    """Edge records each gateway's MirrorMaker has yet to copy to the cloud (its backlog less
    the transaction markers of a drained partition), for the gateways with any."""
    out: dict[str, int] = {}
    for gw in gateways:
        try:
            backlog = gw.mirror.backlog(timeout=5)
        except Exception:  # noqa: BLE001 - an unreachable broker: nothing known, nothing to wait on
            continue
        n = sum(max(0, part["behind"] - MARKER_SLACK) for part in backlog.values())
        if n:
            out[gw.edge_id] = n
    return out


def _heal(gateways: list[Gateway], started: float) -> None:
    """Restart a gateway's MirrorMaker whose task Connect killed (``Mirror.heal``): that
    task's partitions would never cross again."""
    for gw in gateways:
        try:
            failed = gw.mirror.heal()
        except Exception as exc:  # noqa: BLE001 - the demo goes on; the summary shows the lag
            click.echo(f"{gw.edge_id}'s MirrorMaker could not be restarted: {exc}")
            continue
        for name, error in failed.items():
            click.echo(
                f"[{time.monotonic() - started:5.0f}s] {gw.edge_id}'s MirrorMaker: {name} "
                f"failed ({error or 'no reason given'}); MirrorMaker restarted"
            )


def _summary(gateways: list[Gateway], cloud_bootstrap: Target, started: float) -> str:
    lines = [f"--- {time.monotonic() - started:5.0f}s ---"]
    specs = streams.all_streams()
    names = "/".join(s.name for s in specs)

    def each(counts: dict[str, int], topic: str, prefix: str = "") -> str:
        """The count of each stream's ``topic`` (``raw_topic``...), in stream order."""
        return "/".join(str(counts.get(prefix + getattr(s, topic), 0)) for s in specs)

    edge_topics = [t for s in specs for t in (s.raw_topic, s.anon_topic, s.scores_topic)]
    edge_topics += [topics.DLQ_INGEST, topics.ALERTS, topics.MODEL_STATUS]
    cloud_names = []
    for gw in gateways:
        e = _offsets(gw.stack.edge.login(), edge_topics)
        lines.append(
            f"{gw.edge_id}: MQTT -> raw {each(e, 'raw_topic')} {names} (dlq {e.get(topics.DLQ_INGEST, 0)}) "
            f"-> anon {each(e, 'anon_topic')} -> scores {each(e, 'scores_topic')} alerts "
            f"{e.get(topics.ALERTS, 0):>4} model-status {e.get(topics.MODEL_STATUS, 0)}"
        )
        cloud_names += [f"{gw.edge_id}.{t}" for t in topics.replicated_edge_topics()]
    c = _offsets(cloud_bootstrap, cloud_names + [topics.MODELS, topics.LABELS])
    behind = _behind(gateways)
    for gw in gateways:
        mirrored = f"{gw.edge_id}."
        lines.append(
            f"cloud <- {gw.edge_id}: anon {each(c, 'anon_topic', mirrored)} scores "
            f"{each(c, 'scores_topic', mirrored)} alerts {c.get(mirrored + topics.ALERTS, 0)} "
            f"model-status {c.get(mirrored + topics.MODEL_STATUS, 0)} (MirrorMaker 2, exactly "
            f"once; {behind.get(gw.edge_id, 0)} behind)"
        )
    lines.append(
        f"cloud: labels {c.get(topics.LABELS, 0)}, models published "
        f"{c.get(topics.MODELS, 0)} -> gateways' cloud.models"
    )
    return "\n".join(lines)


def _dashboard_login(state: Path, timeout: float = 90.0) -> tuple[str, str] | None:
    path = state / "dashboard-demo-user.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            data = json.loads(path.read_text())
            return data["name"], data["password"]
        time.sleep(1)
    return None


def _follow(
    watcher: LoopWatcher,
    gws: list[Gateway],
    cloud_bootstrap: Target,
    sims: list[subprocess.Popen[bytes]],
    interval: float,
    started: float,
) -> None:
    """Print milestones as they happen and a summary every ``interval`` while the fleets
    drive; then wait (bounded) for a run in progress and the gateways' switch."""
    next_summary = time.monotonic() + interval
    while any(p.poll() is None for p in sims):
        time.sleep(min(5.0, interval))
        _stop_if_asked()
        for line in watcher.poll():
            click.echo(line)
        if time.monotonic() >= next_summary:
            _heal(gws, started)
            click.echo(_summary(gws, cloud_bootstrap, started))
            next_summary = time.monotonic() + interval
    failed = [gw.edge_id for gw, p in zip(gws, sims, strict=True) if p.returncode]
    if failed:
        click.echo(f"fleet simulator of {', '.join(failed)} exited with an error (see its log)")
    click.echo(f"[{time.monotonic() - started:5.0f}s] the fleets have stopped")
    deadline = time.monotonic() + FINISH_S
    waited = False
    # When a MirrorMaker was behind, the cloud judges drift on what it had so far: once it has
    # caught up, the trainer's next drift check must have seen everything.
    lagged, caught_up = False, 0.0
    while time.monotonic() < deadline:
        _stop_if_asked()
        for line in watcher.poll():
            click.echo(line)
        _heal(gws, started)
        behind = _behind(gws)
        if behind and not lagged:
            lag = ", ".join(f"{edge} {n:,} offsets behind" for edge, n in behind.items())
            click.echo(f"MirrorMaker has not copied everything yet: {lag}")
            lagged = True
        elif not behind and lagged and not caught_up:
            caught_up = time.monotonic()
            click.echo(f"[{caught_up - started:5.0f}s] MirrorMaker has copied everything")
        if behind:
            caught_up = 0.0
        settled = not behind and (not lagged or time.monotonic() - caught_up >= DRIFT_CHECK_S + 5.0)
        if not watcher.busy() and settled:
            break
        if not waited:
            click.echo(
                f"waiting (at most {FINISH_S:.0f} s) for replication, the drift run (its "
                "labels, a run in progress or a retry) and the gateways' switch ..."
            )
            waited = True
        time.sleep(5.0)
    time.sleep(5.0)  # the last replicated records and store flush
    click.echo(_summary(gws, cloud_bootstrap, started))


@click.command()
@infra_options
@click.option("--vehicles", default=100, show_default=True, help="Vehicles per gateway.")
@click.option(
    "--duration",
    default=600.0,
    show_default=True,
    help="Seconds the fleets drive (drift starts 30 % in on gateway 2).",
)
@click.option("--gateways", type=click.IntRange(1, 2), default=2, show_default=True)
@click.option("--dashboard-port", default=DASHBOARD_PORT, show_default=True)
@click.option(
    "--metrics-port",
    default=9500,
    show_default=True,
    help="First gateway's first metrics port (the second gateway's is 100 above).",
)
@click.option("--interval", default=15.0, show_default=True, help="Seconds between summaries.")
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Makes the fleets' drives and the demo's fleet secret (so its tokens, and which "
    "vehicles the trainer holds out): the same seed, the same run.",
)
@click.option("--infra-only", is_flag=True, help="Only bring up the brokers and show them.")
@click.option("--down", "down_after", is_flag=True, help="Stop the brokers at the end too.")
def demo(
    vehicles: int,
    duration: float,
    gateways: int,
    dashboard_port: int,
    metrics_port: int,
    interval: float,
    seed: int,
    infra_only: bool,
    down_after: bool,
    **options: Any,
) -> None:
    """Run the whole loop: 2 gateways, their fleets, the cloud store, trainer and dashboard."""
    settings = settings_from(options)
    owner = _Owner(down=down_after)
    _STOP.clear()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, _interrupt)
    failed = True
    try:
        _run(
            owner,
            settings,
            vehicles,
            duration,
            gateways,
            dashboard_port,
            metrics_port,
            interval,
            seed,
            infra_only,
        )
        failed = False
    except KeyboardInterrupt:
        click.echo("\nStopping ...")
        # Ctrl-C is how a running demo is stopped; during start-up, it is cut short.
        failed = not owner.running
    finally:
        owner.close(failed)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if failed:
            click.echo(
                ("The demo failed" if owner.running else "Start-up was cut short")
                + ": the brokers it started are stopped too."
            )
    if failed:
        return
    if infra_only:
        return
    if not down_after:
        click.echo(
            "\nThe brokers keep running (and their data). Stop them with: "
            "fleetsentry infra down"
            + (
                ""
                if gateways == 1
                else f" && fleetsentry infra down --home {settings.home / 'gateway-2'}"
            )
        )


# Set by Ctrl-C or SIGTERM. The KeyboardInterrupt raised with it can land inside a Kafka
# client call that reports it as an error (and a status check that reads an error as "not
# yet"): the demo also looks at this between its steps, so a stop is never lost.
_STOP = threading.Event()


def _interrupt(_sig: int, _frame: Any) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def _stop_if_asked() -> None:
    if _STOP.is_set():
        raise KeyboardInterrupt


class _Owner:
    """Every process the demo starts, each recorded the moment it starts and stopped however
    the demo ends (a failed health check, Ctrl-C, SIGTERM, an error): MirrorMaker 2, the
    cloud services, the gateways and the fleets always. The brokers stay up for the next run
    (``fleetsentry infra down`` stops them) unless ``down``, or unless start-up failed or was
    cut short: then those the demo started itself are stopped (ones already running before
    it are left alone)."""

    def __init__(self, down: bool) -> None:
        self.down = down
        # The demo is running (its fleets drive): a Ctrl-C from now on is its normal end.
        self.running = False
        self.services = ProcessGroup(grace=20.0)
        self.brokers = ProcessGroup(grace=30.0)
        self.mirrors: list[Mirror] = []
        self.stacks: list[Stack] = []

    def stack(self, stack: Stack, services: frozenset[str] | None = None) -> dict[str, Any]:
        self.stacks.append(stack)  # before up(): a start cut short is stopped too
        with self.brokers.adopting():
            return stack.up() if services is None else stack.up(services=services)

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        return self.services.popen(_fleetsentry() + args, log)

    def mirror(self, mirror: Mirror) -> None:
        self.mirrors.append(mirror)
        with self.services.adopting():
            mirror.start()

    def close(self, failed: bool) -> None:
        # Ctrl-C or SIGTERM again while stopping must not leave the rest running.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            _quietly(self.services.close, "the demo's services")
            # One this demo found running (left by an earlier one) is stopped too.
            for mirror in reversed(self.mirrors):
                _quietly(mirror.stop, f"MirrorMaker 2 of {mirror.edge_id}")
            if self.down:
                for stack in reversed(self.stacks):
                    _quietly(stack.down, f"the brokers under {stack.settings.home}")
            if self.down or failed:
                _quietly(self.brokers.close, "the brokers the demo started")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _quietly(stop: Any, what: str) -> None:
    try:
        stop()
    except Exception as exc:  # noqa: BLE001 - stopping the rest matters more
        click.echo(f"could not stop {what}: {exc}", err=True)


def _run(
    owner: _Owner,
    settings: InfraSettings,
    vehicles: int,
    duration: float,
    gateways: int,
    dashboard_port: int,
    metrics_port: int,
    interval: float,
    seed: int,
    infra_only: bool,
) -> None:
    main = Stack(settings)
    if infra_only:
        owner.down = False
        print_status(owner.stack(main), as_json=False)
        owner.running = True
        click.echo("\nStop everything with: fleetsentry infra down")
        return
    print_status(owner.stack(main), as_json=False)
    home = settings.home / "demo"
    logs = home / "logs"
    key_file, public_key = _signing_keys(home)
    secret = _fleet_secret(home, seed)
    gws = _gateways(owner, main, settings, gateways, metrics_port, public_key, secret)
    _start_mirrors_cloud_and_gateways(owner, gws, main, home, dashboard_port, key_file)
    for n, gw in enumerate(gws, start=1):
        argv = _sim_argv(gw, main, home, n, vehicles, duration, seed + n - 1)
        gw.procs.append(owner.spawn(argv, logs / f"{gw.edge_id}-sim.log"))
    owner.running = True
    _stop_if_asked()
    login = _dashboard_login(home / "cloud")
    url = f"http://127.0.0.1:{dashboard_port}/"
    _announce(url, login, logs, gws, duration)
    started = time.monotonic()
    reader = main.cloud.login(DASHBOARD_USER)  # the demo's summary reads as the dashboard does
    watcher = LoopWatcher(
        url,
        login[0] if login else "",
        login[1] if login else "",
        reader,
        [gw.edge_id for gw in gws],
        started,
    )
    try:
        _follow(watcher, gws, reader, [gw.procs[-1] for gw in gws], interval, started)
        click.echo("\n=== The loop ===")
        for line in watcher.closing():
            click.echo(line)
    finally:
        watcher.close()


def _fleet_secret(home: Path, seed: int) -> Path:
    """The demo fleet's secret, one for both gateways (as every gateway of a fleet shares
    one), made from ``seed``: tokens are the same in every run with that seed, and so are the
    vehicles the trainer holds out to judge a model on. It keys the tokens of simulated
    vehicles only; a real fleet's secret is random (``[vault] fleet_secret_file``)."""
    path = home / "fleet.secret"
    value = hashlib.sha256(f"fleetsentry demo fleet {seed}".encode()).digest()
    text = base64.b64encode(value).decode() + "\n"
    if not path.exists() or path.read_text() != text:
        # Another seed is another fleet: the gateways' vaults, filled under the old secret,
        # would refuse the new one. The demo's are its own to start afresh.
        old = sorted(home.glob("edge-*/vault.sqlite*")) if path.exists() else []
        for stale in old:
            stale.unlink()
        if old:
            click.echo("Another --seed, another fleet secret: the gateways' vaults start afresh")
        write_private(path, text)
    return path


def _start_mirrors_cloud_and_gateways(
    owner: _Owner, gws: list[Gateway], main: Stack, home: Path, dashboard_port: int, key: Path
) -> None:
    """MirrorMaker per gateway, the cloud's services, then each gateway's services; returns
    once every MirrorMaker replicates."""
    click.echo("Starting MirrorMaker 2 per gateway ...")
    for gw in gws:
        owner.mirror(gw.mirror)
    _start_cloud(owner, main, home, dashboard_port, key)
    for gw in gws:
        gw.procs.append(
            owner.spawn(
                ["edge", "run", "--config", str(gw.config)], home / "logs" / f"{gw.edge_id}.log"
            )
        )
    for gw in gws:
        gw.mirror.wait_healthy()
        _stop_if_asked()


def _signing_keys(home: Path) -> tuple[Path, Path]:
    """The demo fleet's model-signing key and its public half (made once, then kept)."""
    key_file = home / "fleet.key"
    signing.ensure_private_key(key_file, create=True)
    public_key = home / "fleet.pub"
    signing.write_public_key(signing.load_private_key(key_file), public_key)
    return key_file, public_key


def _gateways(
    owner: _Owner,
    main: Stack,
    settings: InfraSettings,
    gateways: int,
    metrics_port: int,
    public_key: Path,
    fleet_secret: Path,
) -> list[Gateway]:
    """Each gateway's stack (the second's own edge Kafka and Mosquitto started), edge.toml
    and MirrorMaker to the cloud."""
    home = settings.home / "demo"
    stacks = [main] + ([_second_gateway(settings)] if gateways == 2 else [])
    gws: list[Gateway] = []
    for n, stack in enumerate(stacks, start=1):
        edge_id = f"edge-{n}"
        if n > 1:
            click.echo(f"Starting {edge_id}'s own edge Kafka and Mosquitto ...")
            owner.stack(stack, frozenset({"edge", "mqtt"}))
        cfg = home / f"{edge_id}.toml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(
            _edge_toml(
                edge_id,
                stack,
                home / edge_id,
                metrics_port + 100 * (n - 1),
                public_key,
                fleet_secret,
            )
        )
        gws.append(Gateway(edge_id, stack, cfg, main.mirror(edge_id, gateway=stack)))
    return gws


def _start_cloud(
    owner: _Owner, main: Stack, home: Path, dashboard_port: int, key_file: Path
) -> None:
    """The cloud's services (trainer, publisher, dashboard: ``cloud run``) and its store."""
    logs = home / "logs"
    cloud_cfg = home / "cloud.toml"
    cloud_cfg.write_text(_cloud_toml(main, home / "cloud", dashboard_port))
    owner.spawn(
        [
            *("cloud", "run", "--config", str(cloud_cfg), "--key", str(key_file)),
            *("--min-records", "500", "--drift-check", str(DRIFT_CHECK_S)),
        ],
        logs / "cloud-run.log",
    )
    owner.spawn(["cloud", "store", "--config", str(cloud_cfg)], logs / "cloud-store.log")


def _sim_argv(
    gw: Gateway, main: Stack, home: Path, n: int, vehicles: int, duration: float, seed: int
) -> list[str]:
    """``sim run`` for gateway ``n``'s fleet; the second fleet drifts part of the way in."""
    drift = (
        [
            *("--drift", "new_model", "--drift", "firmware_rollout"),
            *("--drift-at", str(round(duration * DRIFT_AT, 1))),
            *("--drift-fraction", str(DRIFT_FRACTION)),
        ]
        if n == 2
        else []
    )
    return [
        *("sim", "run", "--vehicles", str(vehicles), "--duration", str(duration)),
        *("--seed", str(seed), "--mqtt", gw.stack.mqtt.address, "--password", VEHICLE_PASSWORD),
        *("--register-with", str(gw.stack.mqtt.home)),
        *("--labels-kafka", main.cloud.bootstrap),
        *("--labels-kafka-credentials", str(main.cloud.credentials_path)),
        *("--labels-kafka-ca", str(main.cloud.tls_files.ca_file)),
        *("--label-delay", str(LABEL_DELAY_S)),
        *("--decisions-out", str(home / f"{gw.edge_id}-decisions.jsonl")),
        *drift,
    ]


def _announce(
    url: str, login: tuple[str, str] | None, logs: Path, gws: list[Gateway], duration: float
) -> None:
    """Where to look (the dashboard, its sign-in, the logs) and what is about to happen."""
    click.echo(
        f"\nDashboard: {url}"
        + (f"  sign in as {login[0]} / {login[1]}" if login else "  (see logs)")
    )
    click.echo(f"Logs: {logs}   Ctrl-C stops the demo.")
    if len(gws) == 2:
        click.echo(
            f"{gws[1].edge_id}'s fleet changes at {duration * DRIFT_AT:.0f} s (a new "
            "vehicle model joins, a firmware rollout reaches part of the fleet): watch "
            "the cloud see the drift, retrain, promote, and both gateways switch."
        )
    click.echo(
        "Counts are Kafka offsets: topics written in transactions (anon, scores, "
        "alerts, the cloud copies) also count one commit marker per batch.\n"
    )
