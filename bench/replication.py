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
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from shared import contracts, topics  # noqa: E402
from shared.infra.mirror import Mirror  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from shared.kafka_config import Target, client_config  # noqa: E402
from tests.support import free_infra_settings  # noqa: E402

RATE = 2000  # events/s of a busy gateway
TOKEN = "tok" + "2" * 13


def produce(bootstrap: Target, topic: str, n: int, t0: float) -> float:
    p = Producer(client_config(bootstrap, {"transactional.id": f"bench-{uuid.uuid4()}",
                                           "linger.ms": 20, "batch.num.messages": 5000}))
    p.init_transactions(30)
    start = time.monotonic()
    for chunk in range(0, n, 5000):
        p.begin_transaction()
        for i in range(chunk, min(n, chunk + 5000)):
            eid = f"{i}-{uuid.uuid4().hex[:8]}"
            p.produce(topic, key=eid.encode(), value=contracts.encode(contracts.Score(
                event_id=eid, ts=t0 + i / RATE, stream="telemetry", token=TOKEN, score=0.2,
                threshold=1.0, model_version="bench", anomalous=False)))
            if i % 1000 == 0:
                p.poll(0)
        p.commit_transaction(60)
    return time.monotonic() - start


def count_until(bootstrap: Target, topic: str, n: int, timeout: float) -> tuple[float, float]:
    """Seconds until a read_committed consumer has read ``n`` records of ``topic``, and
    seconds until it read the first one."""
    c = Consumer(client_config(bootstrap, {
        "group.id": f"bench-{uuid.uuid4()}", "isolation.level": "read_committed",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "topic.metadata.refresh.interval.ms": 1000}))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=60_000,
                    help="backlog events (2,000/s x 600 s = 1,200,000 is a full ten minutes)")
    ap.add_argument("--live", type=int, default=20_000)
    ap.add_argument("--restart", action="store_true",
                    help="cut the link by stopping MirrorMaker instead of pausing it")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra MirrorMaker property, e.g. 'edge-b->cloud.transaction.boundary"
                         "=poll' (repeatable)")
    args = ap.parse_args()
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
            edge, cloud = stack.edge.login(), stack.cloud.bootstrap

            produce(edge, topics.ANON_TELEMETRY, args.live, time.time())
            live_s, _ = count_until(cloud, mirror.cloud_topic(topics.ANON_TELEMETRY), args.live,
                                    300)

            with _link_cut(mirror, args.restart):
                produce(edge, topics.SCORES_TELEMETRY, args.backlog, time.time())
                baseline_s, _ = count_until(edge, topics.SCORES_TELEMETRY, args.backlog, 300)
            catch_up_s, first_s = count_until(
                cloud, mirror.cloud_topic(topics.SCORES_TELEMETRY), args.backlog, 600)
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
        "live_events": args.live, "live_events_per_s": round(args.live / live_s),
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
    start_note = (f"incl. MirrorMaker start, first record after {first_s:.1f}s; "
                  f"{result['catch_up_copy_events_per_s']} ev/s after it" if args.restart
                  else "after resuming MirrorMaker")
    print(f"edge->cloud (exactly once) live {result['live_events_per_s']} ev/s; backlog of "
          f"{args.backlog} ({args.backlog / RATE:.0f} s of a {RATE} ev/s gateway) caught up in "
          f"{catch_up_s:.1f}s {start_note} ({result['catch_up_events_per_s']} ev/s) vs "
          f"{baseline_s:.2f}s for a plain consumer on the edge "
          f"({result['baseline_edge_read_events_per_s']} ev/s; "
          f"{result['catch_up_vs_baseline']}x its time); whole run {result['run_s']}s")


if __name__ == "__main__":
    main()
