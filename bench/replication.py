"""Edge -> cloud replication through MirrorMaker 2: live events/s and a backlog's catch-up time.

Starts its own edge Kafka (1 node), cloud Kafka (3 nodes) and MirrorMaker on free ports in a
temporary folder, and stops them all at the end. Figures:

- live: events/s from a transactional producer on the edge until a read_committed consumer in
  the cloud has seen them all (exactly-once MirrorMaker in between);
- backlog: MirrorMaker is paused (SIGSTOP: nothing crosses) while the gateway produces
  ``--backlog`` events; catch-up is the time from resuming it until the cloud holds them
  all. With ``--restart`` MirrorMaker is stopped and started again instead, and the figure
  includes its start-up (the time to the first backlog record in the cloud is reported);
- baseline (same run): a plain read_committed consumer reading the same backlog straight
  from the edge cluster, i.e. what reading alone costs on this machine.

The backlog is bounded (60,000 events, 30 s of a 2,000 ev/s gateway, by default) so the run
stays within a few minutes; a full ten minutes is ``--backlog 1200000``.

    .venv/bin/python bench/replication.py [--backlog 60000] [--live 20000]

``--forward`` measures store and forward instead (docs/store-and-forward.md): a backlog of
simulator events, anonymized and scored as the gateway writes them (``anon.*`` and
``scores.*``, lz4, transactions), built while no MirrorMaker runs; then one MirrorMaker after
another (each under its own edge id, so each copies the whole backlog) per cloud-side codec,
and once more with a read cap (``max_bytes_per_s``). Figures per event: bytes in the edge
log segments, bytes in the cloud's (one replica's share: what crossed the link), MirrorMaker's
CPU while copying, and the catch-up rate, beside a plain consumer reading the same backlog
from the edge. The backlog is small (``--vehicles`` x ``--seconds`` of driving, 30,000
telemetry events by default): the rates it gives scale to an hour's backlog.

    .venv/bin/python bench/replication.py --forward [--codecs none,lz4,zstd] [--cap 0]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from bench._procstat import cpu_seconds  # noqa: E402
from shared import contracts, topics  # noqa: E402
from shared.infra.mirror import CLOUD_ALIAS, CLOUD_COMPRESSION, Mirror  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from shared.kafka_config import ADMIN_USER, Target, client_config  # noqa: E402
from tests.support import free_infra_settings  # noqa: E402

RATE = 2000  # events/s of a busy gateway
TOKEN = "tok" + "2" * 13


def produce(bootstrap: Target, topic: str, n: int, t0: float) -> float:
    p = Producer(
        client_config(
            bootstrap,
            {
                "transactional.id": f"bench-{uuid.uuid4()}",
                "linger.ms": 20,
                "batch.num.messages": 5000,
            },
        )
    )
    p.init_transactions(30)
    start = time.monotonic()
    for chunk in range(0, n, 5000):
        p.begin_transaction()
        for i in range(chunk, min(n, chunk + 5000)):
            eid = f"{i}-{uuid.uuid4().hex[:8]}"
            p.produce(
                topic,
                key=eid.encode(),
                value=contracts.encode(
                    contracts.Score(
                        event_id=eid,
                        ts=t0 + i / RATE,
                        stream="telemetry",
                        token=TOKEN,
                        score=0.2,
                        threshold=1.0,
                        model_version="bench",
                        anomalous=False,
                    )
                ),
            )
            if i % 1000 == 0:
                p.poll(0)
        p.commit_transaction(60)
    return time.monotonic() - start


def _committed_reader(bootstrap: Target) -> Consumer:
    """A read_committed consumer of its own group, from the start, quick to see new topics."""
    return Consumer(
        client_config(
            bootstrap,
            {
                "group.id": f"bench-{uuid.uuid4()}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 1000,
            },
        )
    )


def count_until(bootstrap: Target, topic: str, n: int, timeout: float) -> tuple[float, float]:
    """Seconds until a read_committed consumer has read ``n`` records of ``topic``, and
    seconds until it read the first one."""
    c = _committed_reader(bootstrap)
    start = time.monotonic()
    seen = 0
    try:
        while True:
            meta = c.list_topics(topic, timeout=10).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                break
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{topic} never appeared")
            time.sleep(0.5)
        c.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        first = None
        while seen < n:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"only {seen} of {n} records of {topic} after {timeout}s")
            seen += sum(1 for m in c.consume(5000, 0.2) if not m.error())
            if seen and first is None:
                first = time.monotonic() - start
    finally:
        c.close()
    return time.monotonic() - start, first or 0.0


@contextlib.contextmanager
def _link_cut(mirror: Mirror, restart: bool) -> Iterator[None]:
    """Nothing crosses inside the block: MirrorMaker is paused (or stopped, then started)."""
    pid = mirror.pid()
    if pid is None:
        raise RuntimeError("MirrorMaker is not running")
    if restart:
        mirror.stop()
    else:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if restart:
            mirror.start()
        else:
            os.kill(pid, signal.SIGCONT)


FORWARD_TOPICS = (
    topics.ANON_TELEMETRY,
    topics.ANON_PAYMENTS,
    topics.SCORES_TELEMETRY,
    topics.SCORES_PAYMENTS,
)


def gateway_records(vehicles: int, seconds: int) -> tuple[int, list[tuple[str, bytes, bytes]]]:
    """(vehicle events, records) of a fleet's drive as the enricher and scorer write them."""
    from firmware_sim import Fleet, SimSettings

    from shared.features import Anonymizer
    from shared.tokens import Tokenizer

    anon = Anonymizer(Tokenizer(b"bench-secret-0123456789"))
    out: list[tuple[str, bytes, bytes]] = []
    events = 0
    fleet = Fleet(SimSettings(vehicles=vehicles, duration_s=seconds, seed=7))
    for topic, payload in fleet.events():
        stream = topic.rsplit("/", 1)[-1]
        if stream not in ("telemetry", "payments"):
            continue
        rec = anon.message(topic, payload)
        assert isinstance(rec, contracts.AnonTelemetry | contracts.AnonPayment)  # built-in streams
        token = rec.vehicle_token
        events += 1
        score = contracts.Score(
            event_id=rec.event_id,
            ts=rec.ts,
            stream=stream,
            token=token,
            score=round(0.05 + (hash(rec.event_id) % 1000) / 1000, 4),
            threshold=1.0,
            model_version="telemetry-20260105-0800",
            anomalous=False,
        )
        out.append((f"anon.{stream}", token.encode(), contracts.encode(rec)))
        out.append((f"scores.{stream}", token.encode(), contracts.encode(score)))
    return events, out


def produce_records(
    bootstrap: Target, records: list[tuple[str, bytes, bytes]], codec: str = "lz4"
) -> None:
    """As the gateway's stages write: lz4 (their default), linger 20 ms, a transaction per
    5,000 records."""
    p = Producer(
        client_config(
            bootstrap,
            {
                "transactional.id": f"bench-{uuid.uuid4()}",
                "linger.ms": 20,
                "compression.type": codec,
                "batch.num.messages": 5000,
            },
        )
    )
    p.init_transactions(30)
    for chunk in range(0, len(records), 5000):
        p.begin_transaction()
        for n, (topic, key, value) in enumerate(records[chunk : chunk + 5000]):
            p.produce(topic, key=key, value=value)
            if n % 1000 == 0:
                p.poll(0)
        p.commit_transaction(60)


def read_all(
    bootstrap: Target,
    names: list[str],
    n: int,
    timeout: float,
    progress: str = "",
    on_first: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """(seconds to the first record, seconds to the n-th) of a read_committed consumer of
    ``names`` from their start (topics that do not exist yet are waited for)."""
    c = _committed_reader(bootstrap)
    start, seen, first, said = time.monotonic(), 0, 0.0, time.monotonic()
    c.subscribe(names)
    try:
        while seen < n:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"only {seen} of {n} records after {timeout}s")
            seen += sum(1 for m in c.consume(5000, 0.2) if not m.error())
            if seen and not first:
                first = time.monotonic() - start
                if on_first:
                    on_first()
            if progress and time.monotonic() - said > 10:
                said = time.monotonic()
                print(
                    f"  {progress}: {seen}/{n} records after {said - start:.0f}s", file=sys.stderr
                )
    finally:
        c.close()
    return first, time.monotonic() - start


def forward_once(
    stack: Stack, edge_id: str, codec: str, cap: int, events: int, records: int
) -> dict[str, Any]:
    """One MirrorMaker copies the whole backlog to the cloud under ``edge_id``."""
    base = stack.mirror(edge_id)
    mirror = dataclasses.replace(
        base, max_bytes_per_s=cap, overrides=((f"{CLOUD_ALIAS}.producer.compression.type", codec),)
    )
    cloud_names = [mirror.cloud_topic(t) for t in FORWARD_TOPICS]
    t0 = time.monotonic()
    mirror.start()
    try:
        pid = mirror.pid()
        assert pid is not None
        at_first: list[float] = []
        first_s, all_s = read_all(
            stack.cloud.login(ADMIN_USER),
            cloud_names,
            records,
            900,
            progress=f"{codec}{' capped' if cap else ''}",
            on_first=lambda: at_first.append(cpu_seconds(pid)),
        )
        # CPU from the first record on: the copying, not the JVM's start.
        copy_cpu = cpu_seconds(pid) - at_first[0]
    finally:
        mirror.stop()
    wire = sum(stack.cloud.topic_bytes(t) for t in cloud_names) / stack.cloud.replication_factor
    copy_s = max(all_s - first_s, 1e-3)
    return {
        "codec": codec,
        "cap_bytes_per_s": cap,
        "start_to_first_record_s": round(first_s, 1),
        "copy_s": round(copy_s, 1),
        "catch_up_events_per_s": round(events / copy_s),
        "wire_bytes_per_event": round(wire / events, 1),
        "mirror_cpu_us_per_event": round(copy_cpu / events * 1e6, 1),
        "since_start_s": round(time.monotonic() - t0, 1),
    }


FLEETS = (50, 200, 1000)


def store_and_forward(args: argparse.Namespace) -> None:
    began = time.monotonic()
    events, recs = gateway_records(args.vehicles, args.seconds)
    per_vehicle_s = events / (args.vehicles * args.seconds)
    json_bytes = sum(len(k) + len(v) for _, k, v in recs)
    print(
        f"{events} events ({len(recs)} records) of {args.vehicles} vehicles x {args.seconds} s",
        file=sys.stderr,
    )
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        stack = Stack(free_infra_settings(Path(tmp)), quiet=True)
        try:
            stack.up(services=frozenset({"edge", "cloud"}))
            edge = stack.edge.login()
            produce_records(edge, recs, args.edge_codec)  # the outage: no MirrorMaker yet
            on_disk = {t: stack.edge.topic_bytes(t) for t in FORWARD_TOPICS}
            first_s, all_s = read_all(edge, list(FORWARD_TOPICS), len(recs), 300)
            baseline_s = max(all_s - first_s, 1e-3)
            for codec in args.codecs.split(","):
                runs.append(forward_once(stack, f"edge-{codec}", codec, 0, events, len(recs)))
                print(f"  {runs[-1]}", file=sys.stderr)
            edge_total = sum(on_disk.values())
            cap = args.cap or max(1024, int(edge_total / args.cap_seconds))
            runs.append(
                forward_once(
                    stack,
                    f"edge-{CLOUD_COMPRESSION}-capped",
                    CLOUD_COMPRESSION,
                    cap,
                    events,
                    len(recs),
                )
            )
            print(f"  {runs[-1]}", file=sys.stderr)
        finally:
            stack.cloud.stop(timeout=5)
            stack.down()
    edge_per_event = edge_total / events
    for run in runs:
        rate = run["catch_up_events_per_s"]
        run["backlog_hours_per_catch_up_hour"] = {
            f"{v}_vehicles": round(rate / (v * per_vehicle_s), 1) for v in FLEETS
        }
        if run["cap_bytes_per_s"]:
            run["edge_bytes_per_s_read"] = round(rate * edge_per_event)
            run["share_of_cap"] = round(rate * edge_per_event / run["cap_bytes_per_s"], 2)
    result = {
        "bench": "replication-store-and-forward",
        "edge_codec": args.edge_codec,
        "vehicles": args.vehicles,
        "drive_s": args.seconds,
        "events": events,
        "records": len(recs),
        "events_per_vehicle_s": round(per_vehicle_s, 4),
        "json_bytes_per_event": round(json_bytes / events, 1),
        "edge_disk_bytes_per_event": round(edge_per_event, 1),
        "edge_disk_bytes_per_event_by_topic": {t: round(b / events, 1) for t, b in on_disk.items()},
        "baseline_edge_read_events_per_s": round(events / baseline_s),
        "runs": runs,
        "run_s": round(time.monotonic() - began),
    }
    print(json.dumps(result))
    print(
        f"{events} events: {result['json_bytes_per_event']:.0f} B/event as JSON, "
        f"{edge_per_event:.0f} B/event in the edge log ({args.edge_codec}); plain edge read "
        f"{result['baseline_edge_read_events_per_s']} ev/s (baseline)"
    )
    for run in runs:
        capped = (
            f", cap {run['cap_bytes_per_s']} B/s ({run['share_of_cap']:.2f} of it used)"
            if run["cap_bytes_per_s"]
            else ""
        )
        print(
            f"  to the cloud, {run['codec']:4s}{capped}: {run['wire_bytes_per_event']:.0f} "
            f"B/event on the wire, caught up {run['catch_up_events_per_s']} ev/s "
            f"({run['catch_up_events_per_s'] / result['baseline_edge_read_events_per_s']:.2f}x "
            f"the plain read), MirrorMaker {run['mirror_cpu_us_per_event']:.0f} CPU us/event"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--backlog",
        type=int,
        default=60_000,
        help="backlog events (2,000/s x 600 s = 1,200,000 is a full ten minutes)",
    )
    ap.add_argument("--live", type=int, default=20_000)
    ap.add_argument(
        "--restart",
        action="store_true",
        help="cut the link by stopping MirrorMaker instead of pausing it",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra MirrorMaker property, e.g. 'edge-b->cloud.transaction.boundary"
        "=poll' (repeatable)",
    )
    ap.add_argument(
        "--forward",
        action="store_true",
        help="measure store and forward: bytes/event on disk and on the wire per "
        "codec, capped and uncapped catch-up",
    )
    ap.add_argument("--vehicles", type=int, default=100, help="with --forward")
    ap.add_argument("--seconds", type=int, default=300, help="with --forward: drive length")
    ap.add_argument("--codecs", default="none,lz4,zstd", help="with --forward")
    ap.add_argument(
        "--cap",
        type=int,
        default=0,
        help="with --forward: max_bytes_per_s of the capped run (0: the backlog's "
        "edge bytes / --cap-seconds)",
    )
    ap.add_argument("--cap-seconds", type=float, default=40.0)
    ap.add_argument(
        "--edge-codec",
        default="lz4",
        help="with --forward: the codec the gateway's stages write the backlog "
        "with ([enricher] compression; lz4 by default)",
    )
    args = ap.parse_args()
    if args.forward:
        store_and_forward(args)
        return
    overrides = tuple(tuple(kv.split("=", 1)) for kv in args.set)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-replication-") as tmp:
        stack = Stack(free_infra_settings(Path(tmp)), quiet=True)
        mirror = Mirror("edge-b", "", "", Path(tmp))
        try:
            t = time.monotonic()
            stack.up(services=frozenset({"edge", "cloud"}))
            mirror = dataclasses.replace(stack.mirror("edge-b"), overrides=overrides)
            mirror.start()
            mirror.wait_healthy(240)
            print(f"clusters and mirror up in {time.monotonic() - t:.0f}s", file=sys.stderr)
            edge, cloud = stack.edge.login(), stack.cloud.login(ADMIN_USER)

            produce(edge, topics.ANON_TELEMETRY, args.live, time.time())
            live_s, _ = count_until(
                cloud, mirror.cloud_topic(topics.ANON_TELEMETRY), args.live, 300
            )

            with _link_cut(mirror, args.restart):
                produce(edge, topics.SCORES_TELEMETRY, args.backlog, time.time())
                baseline_s, _ = count_until(edge, topics.SCORES_TELEMETRY, args.backlog, 300)
            catch_up_s, first_s = count_until(
                cloud, mirror.cloud_topic(topics.SCORES_TELEMETRY), args.backlog, 600
            )
        finally:
            mirror.stop()
            stack.cloud.stop(timeout=5)  # a throw-away cluster: no need to wait out its quorum
            stack.down()
    copy_s = max(catch_up_s - first_s, 1e-3)
    conf = mirror.properties(0)
    result = {
        "bench": "replication",
        "exactly_once": conf["cloud.exactly.once.source.support"],
        "link_cut": "mirror stopped and restarted" if args.restart else "mirror paused",
        "transaction_boundary": conf.get("edge-b->cloud.transaction.boundary", "poll"),
        "overrides": dict(overrides),
        "live_events": args.live,
        "live_events_per_s": round(args.live / live_s),
        "backlog_events": args.backlog,
        "backlog_device_seconds_at_2000_per_s": args.backlog / RATE,
        "catch_up_s": round(catch_up_s, 1),
        "catch_up_events_per_s": round(args.backlog / catch_up_s),
        "baseline_edge_read_s": round(baseline_s, 2),
        "baseline_edge_read_events_per_s": round(args.backlog / baseline_s),
        "catch_up_vs_baseline": round(catch_up_s / baseline_s, 1),
        "run_s": round(time.monotonic() - began),
    }
    if args.restart:
        result["mirror_restart_to_first_record_s"] = round(first_s, 1)
        result["catch_up_copy_events_per_s"] = round(args.backlog / copy_s)
    print(json.dumps(result))
    start_note = (
        f"incl. MirrorMaker start, first record after {first_s:.1f}s; "
        f"{result['catch_up_copy_events_per_s']} ev/s after it"
        if args.restart
        else "after resuming MirrorMaker"
    )
    print(
        f"edge->cloud (exactly once) live {result['live_events_per_s']} ev/s; backlog of "
        f"{args.backlog} ({args.backlog / RATE:.0f} s of a {RATE} ev/s gateway) caught up in "
        f"{catch_up_s:.1f}s {start_note} ({result['catch_up_events_per_s']} ev/s) vs "
        f"{baseline_s:.2f}s for a plain consumer on the edge "
        f"({result['baseline_edge_read_events_per_s']} ev/s; "
        f"{result['catch_up_vs_baseline']}x its time); whole run {result['run_s']}s"
    )


if __name__ == "__main__":
    main()
