"""Enricher throughput (raw.* -> vault + anon.*, Kafka transactions on) beside a plain loop.

Baseline, measured in the same run on the same backlog: a bare consume -> produce loop (same
batch size, idempotent producer, no transactions, no decoding, no features, no vault) copying
raw.* to a scratch topic. Both run as their own processes, one after the other, over one
backlog of simulator events (telemetry plus payments) written beforehand, so the writer's CPU
stays out of the measurement. Reports events/s, CPU time per event and peak RSS per process.

Targets: enricher >= 20,000 events/s; peak RSS <= 150 MB. Starts its own edge Kafka on free
ports and stops it.

Then the telemetry frames alone, three times, each through its own enricher: the built-in
``telemetry`` stream (its shipped declaration in the engine, records in ``anon.telemetry``'s
shape); ``telemetry_generic``, a declared stream whose declaration is the built-in telemetry one
without its named transforms (``bench/features.py`` builds it); and ``telemetry_whole``, the
whole built-in declaration as a declared stream (``AnonRecord``s). The same frames are in every
stream's raw topic.

``--against REV`` runs another commit's enricher too (from a git worktree of it, over the same
backlog, after this tree's), and prints the two side by side: how a change moved the figure,
measured in one run.

    .venv/bin/python bench/enricher.py [--events 120000] [--batch 5000] [--against HEAD~1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, also when the venv is another's

from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bench._procstat import peak_rss_mb  # noqa: E402
from bench._worktree import checkout, git, remove  # noqa: E402
from shared import streams, topics  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from shared.infra.topics_admin import ensure_topics  # noqa: E402
from shared.kafka_config import KafkaSettings, Target, bootstrap_of, client_config  # noqa: E402
from shared.kafka_write import produce  # noqa: E402
from tests.support import free_infra_settings, kafka_table  # noqa: E402

SCRATCH = "bench.baseline"
DEADLINE_S = 300.0
STARTED = time.monotonic()


def left() -> float:
    return max(5.0, DEADLINE_S - (time.monotonic() - STARTED))


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --- backlog -----------------------------------------------------------------------------


def write_backlog(
    bootstrap: Target, events: int, copy_telemetry: tuple[str, ...] = ()
) -> dict[str, int]:
    """Simulator events to raw.* keyed by VIN (the bridge's output), as fast as Kafka takes;
    every telemetry frame to each of ``copy_telemetry`` too (raw topics)."""
    from firmware_sim import Fleet, SimSettings

    vehicles = 200
    fleet = Fleet(
        SimSettings(vehicles=vehicles, duration_s=events / vehicles + 1, seed=42, payment_rate=20.0)
    )
    p = Producer(
        client_config(
            bootstrap,
            {
                "linger.ms": 20,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
                "enable.idempotence": True,
            },
        )
    )
    counts: dict[str, int] = {}
    n = 0
    for topic, payload in fleet.events():
        _, vin, suffix = topic.split("/")
        spec = streams.by_mqtt_suffix(suffix)
        assert spec is not None
        produce(p, spec.raw_topic, payload, vin.encode())
        if spec is streams.TELEMETRY:
            for copy in copy_telemetry:
                produce(p, copy, payload, vin.encode())
        counts[spec.name] = counts.get(spec.name, 0) + 1
        n += 1
        if n >= events:
            break
    assert p.flush(left()) == 0, "backlog not fully written"
    return counts


# --- the two measured processes ----------------------------------------------------------


def child_baseline(args: argparse.Namespace) -> dict[str, float]:
    login = _login(args)
    c = Consumer(
        client_config(
            login,
            {
                "group.id": f"bench-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    p = Producer(
        client_config(
            login,
            {
                "linger.ms": 5,
                "compression.type": "lz4",
                "enable.idempotence": True,
                "queue.buffering.max.messages": 500_000,
            },
        )
    )
    c.subscribe([s.raw_topic for s in streams.all_streams()])
    n, first, cpu0 = 0, 0.0, 0.0
    deadline = time.monotonic() + args.timeout
    while n < args.expect and time.monotonic() < deadline:
        msgs = c.consume(num_messages=args.batch, timeout=0.1)
        if msgs and not first:
            first, cpu0 = time.perf_counter(), cpu_seconds()
        for m in msgs:
            if m.error():
                continue
            produce(p, SCRATCH, m.value(), m.key())
            n += 1
        p.poll(0)
        c.commit(asynchronous=True)
    p.flush(30)
    elapsed = time.perf_counter() - first
    c.close()
    return {"events": n, "seconds": elapsed, "cpu_s": cpu_seconds() - cpu0}


def child_enricher(args: argparse.Namespace) -> dict[str, float]:
    from edge.config import EdgeConfig
    from edge.enricher import Enricher
    from edge.vault.setup import fleet_tokenizer, open_vault
    from shared.config import convert

    if args.declarations:
        streams.use_declarations(args.declarations)
    only = [streams.get(name) for name in args.stream] if args.stream else None
    cfg = convert(
        {
            "edge_id": f"bench-{uuid.uuid4().hex[:8]}",
            "data_dir": args.data_dir,
            "kafka": kafka_table(_login(args)),
            "metrics": {"base_port": 0},
            "enricher": {"group": f"bench-{uuid.uuid4().hex[:8]}", "batch_size": args.batch},
        },
        EdgeConfig,
    )
    vault = open_vault(cfg)
    enricher = Enricher(cfg, vault, fleet_tokenizer(cfg), only=only)
    enricher.start()
    first, cpu0 = 0.0, 0.0
    deadline = time.monotonic() + args.timeout
    while enricher.consumed < args.expect and time.monotonic() < deadline:
        t, c0 = time.perf_counter(), cpu_seconds()
        if enricher.step() and not first:
            first, cpu0 = t, c0
    elapsed = time.perf_counter() - first
    cpu = cpu_seconds() - cpu0
    out = {
        "events": enricher.consumed,
        "seconds": elapsed,
        "cpu_s": cpu,
        "produced": enricher.produced,
        "transactions": enricher.batches,
        "process_s": enricher.process_s,
        "commit_s": enricher.commit_s,
        "vault_values": vault.count(),
    }
    enricher.close()
    vault.close()
    return out


def _login(args: argparse.Namespace) -> Target:
    if not args.credentials_file:
        return str(args.bootstrap)
    return KafkaSettings(bootstrap=args.bootstrap, credentials_file=Path(args.credentials_file))


def run_child(
    kind: str,
    login: Target,
    expect: int,
    batch: int,
    data_dir: str,
    script: Path = ROOT,
    only: tuple[str, ...] = (),
    declarations: Path | None = None,
) -> dict:
    """One measured process: this file's child, or (``script``) another checkout's. ``only``:
    the streams it enriches (default all); ``declarations``: a directory of them to load."""
    creds = [] if isinstance(login, str) else ["--credentials-file", str(login.credentials_file)]
    creds += [arg for name in only for arg in ("--stream", name)]
    if declarations is not None:
        creds += ["--declarations", str(declarations)]
    argv = [
        sys.executable,
        str(script / "bench" / "enricher.py"),
        "_child",
        kind,
        "--bootstrap",
        bootstrap_of(login),
        *creds,
        "--expect",
        str(expect),
        "--batch",
        str(batch),
        "--data-dir",
        data_dir,
        "--timeout",
        str(max(10.0, left() - 15)),
    ]
    out = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=left(), cwd=script
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} ({script}) failed:\n{out.stderr[-3000:]}")
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    result["events_per_s"] = result["events"] / result["seconds"] if result["seconds"] else 0.0
    result["cpu_us_per_event"] = 1e6 * result["cpu_s"] / max(1, result["events"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=120_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument(
        "--against", metavar="REV", help="also run this commit's enricher (git worktree)"
    )
    args = ap.parse_args()
    other: dict | None = None
    from bench.features import generic_telemetry, whole_telemetry

    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "streams"
        folder.mkdir()
        generic = generic_telemetry(folder)
        whole = whole_telemetry(folder)
        worktree = checkout(args.against, tmp / "against") if args.against else None
        stack = Stack(free_infra_settings(tmp / "infra"), quiet=True)
        try:
            stack.up(services=frozenset({"edge"}))
            bootstrap = stack.edge.login()
            admin = AdminClient(client_config(bootstrap))
            for fut in admin.create_topics([NewTopic(SCRATCH, 3, 1)]).values():
                fut.result(30)
            ensure_topics(bootstrap, "edge", replication_factor=1)  # the declared stream's
            counts = write_backlog(bootstrap, args.events, (generic.raw_topic, whole.raw_topic))
            total = sum(counts.values())
            frames = counts["telemetry"]
            base = run_child("baseline", bootstrap, total, args.batch, str(tmp / "b"))
            enr = run_child("enricher", bootstrap, total, args.batch, str(tmp / "e"))
            # Each run after the first on an empty changelog: else it restores the dedup
            # windows and states of the runs before and drops the backlog as duplicates.
            fresh_changelog(admin, bootstrap)
            alone = {
                "built-in": run_child(
                    "enricher", bootstrap, frames, args.batch, str(tmp / "t"), only=("telemetry",)
                )
            }
            fresh_changelog(admin, bootstrap)
            alone["declared"] = run_child(
                "enricher",
                bootstrap,
                frames,
                args.batch,
                str(tmp / "g"),
                only=(generic.name,),
                declarations=folder,
            )
            fresh_changelog(admin, bootstrap)
            alone["whole"] = run_child(
                "enricher",
                bootstrap,
                frames,
                args.batch,
                str(tmp / "w"),
                only=(whole.name,),
                declarations=folder,
            )
            if worktree is not None:
                fresh_changelog(admin, bootstrap)
                other = run_child(
                    "enricher", bootstrap, total, args.batch, str(tmp / "a"), script=worktree
                )
                other["rev"] = args.against
                other["commit"] = git("rev-parse", "HEAD", cwd=worktree)
        finally:
            stack.down()
            if worktree is not None:
                remove(worktree)
    report = {
        "bench": "enricher",
        "events": total,
        "by_stream": counts,
        "batch": args.batch,
        "enricher": enr,
        "baseline": base,
        "enricher_vs_baseline": enr["events_per_s"] / base["events_per_s"],
        "telemetry_alone": alone,
        "declared_vs_builtin": alone["declared"]["events_per_s"]
        / alone["built-in"]["events_per_s"],
        "whole_vs_builtin": alone["whole"]["events_per_s"] / alone["built-in"]["events_per_s"],
        "targets": {"events_per_s": 20_000, "peak_rss_mb": 150},
        # Other work on the machine skews absolute figures; the ratio travels better.
        "loadavg_1m": os.getloadavg()[0],
    }
    if other is not None:
        report["against"] = other
        report["enricher_vs_against"] = enr["events_per_s"] / other["events_per_s"]
    print(json.dumps(report))
    print(
        f"enricher {enr['events_per_s']:,.0f} events/s ({enr['cpu_us_per_event']:.0f} us CPU/event, "
        f"{enr['transactions']} transactions, peak RSS {enr['peak_rss_mb']:.0f} MB) vs plain "
        f"consume->produce {base['events_per_s']:,.0f} events/s ({base['cpu_us_per_event']:.0f} "
        f"us CPU/event, peak RSS {base['peak_rss_mb']:.0f} MB): ratio "
        f"{report['enricher_vs_baseline']:.2f}; {total:,} events"
    )
    b, d = alone["built-in"], alone["declared"]
    print(
        f"telemetry frames alone ({frames:,}): built-in stream {b['events_per_s']:,.0f} events/s "
        f"({b['cpu_us_per_event']:.0f} us CPU/event, peak RSS {b['peak_rss_mb']:.0f} MB); "
        f"declared telemetry_generic {d['events_per_s']:,.0f} events/s "
        f"({d['cpu_us_per_event']:.0f} us CPU/event, peak RSS {d['peak_rss_mb']:.0f} MB): "
        f"declared {report['declared_vs_builtin']:.2f}x the built-in"
    )
    w = alone["whole"]
    print(
        f"the whole telemetry declaration as a declared stream (telemetry_whole, named "
        f"transforms too): {w['events_per_s']:,.0f} events/s ({w['cpu_us_per_event']:.0f} us "
        f"CPU/event, peak RSS {w['peak_rss_mb']:.0f} MB): {report['whole_vs_builtin']:.2f}x "
        "the built-in"
    )
    if other is not None:
        print(
            f"{args.against} ({other['commit'][:10]}): enricher {other['events_per_s']:,.0f} "
            f"events/s ({other['cpu_us_per_event']:.0f} us CPU/event, peak RSS "
            f"{other['peak_rss_mb']:.0f} MB); this tree {report['enricher_vs_against']:.2f}x it"
        )


def fresh_changelog(admin: AdminClient, login: Target) -> None:
    """Delete the enricher's changelog and create it again, empty (as `infra up` does): an
    enricher restores its state (the event ids it has seen) from it, and would drop the
    backlog as duplicates."""
    for fut in admin.delete_topics([topics.ENRICHER_STATE]).values():
        fut.result(30)
    deadline = time.monotonic() + 60
    while topics.ENRICHER_STATE in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise SystemExit(f"{topics.ENRICHER_STATE} was not deleted within 60 s")
        time.sleep(0.5)
    ensure_topics(login, "edge", replication_factor=1)


def child_main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["baseline", "enricher"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--credentials-file", default="")
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("--stream", action="append", default=[], help="enrich only this stream")
    ap.add_argument("--declarations", default="", help="load this directory's declarations")
    args = ap.parse_args(sys.argv[2:])
    result = child_baseline(args) if args.kind == "baseline" else child_enricher(args)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main()
    else:
        main()
