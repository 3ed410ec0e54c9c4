"""What an idle gateway costs: CPU of its services and its Kafka while no vehicle sends.

Starts its own edge Kafka and Mosquitto on free ports, then ``fleetsentry edge run`` with the
bridge, enricher, scorer and model agent (the baseline models), lets them settle and measures
each process's CPU over --seconds while nothing arrives. A gateway spends most hours like this
(parked vehicles, nights), and on a small box what the services make their Kafka do in that
time is most of its idle load: every consumer's fetch that finds nothing is a request the
broker parses, parks and answers.

Baseline, measured in the same run: the same Kafka node idling with no client at all, over the
same number of seconds, before the services start.

    .venv/bin/python bench/idle.py [--seconds 60] [--settle 20]

Stops by itself: set-up, settling, two windows and tear-down, bounded by the arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._procstat import children, cmdline, cpu_seconds  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from tests.edge_pipeline import EdgePipeline  # noqa: E402
from tests.support import free_infra_settings  # noqa: E402

SERVICES = ("bridge", "enricher", "scorer", "agent")


def window(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's share of one core (%) over ``seconds`` from now."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return {
        name: round(100 * (cpu_seconds(pid) - before[name]) / elapsed, 2)
        for name, pid in pids.items()
    }


def service_pids(root: int) -> dict[str, int]:
    """service name -> pid of ``edge run``'s children (``edge.cli <service> --instance``)."""
    out = {}
    for pid in children(root):
        argv = cmdline(pid)
        for service in SERVICES:
            if service in argv[:4]:
                out[service] = pid
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="each measured window")
    ap.add_argument("--settle", type=float, default=20.0, help="wait after start-up")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-idle-") as tmp:
        stack = Stack(free_infra_settings(Path(tmp) / "infra"), quiet=True)
        pipeline = EdgePipeline(stack, Path(tmp) / "edge", services=SERVICES)
        try:
            stack.up(services=frozenset({"edge", "mqtt"}))
            kafka = next(iter(stack.edge.running_pids().values()))
            time.sleep(args.settle)
            bare = window({"kafka": kafka}, args.seconds)["kafka"]
            pipeline.start()
            assert pipeline.proc is not None
            time.sleep(args.settle)
            pids = {**service_pids(pipeline.proc.pid), "kafka": kafka}
            missing = set(SERVICES) - set(pids)
            if missing:
                raise SystemExit(f"edge run has no {sorted(missing)} process: {pipeline.tail()}")
            busy = window(pids, args.seconds)
        finally:
            pipeline.stop()
            stack.down()
    services = round(sum(busy[s] for s in SERVICES), 2)
    figures = {
        "bench": "idle",
        "seconds": args.seconds,
        "percent_of_a_core": busy,
        "services_percent": services,
        "kafka_percent": busy["kafka"],
        "gateway_percent": round(services + busy["kafka"], 2),
        "baseline_kafka_alone_percent": bare,
        "kafka_vs_alone": round(busy["kafka"] / bare, 1) if bare else None,
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(figures))
    print(
        f"idle gateway over {args.seconds:.0f}s: services {services:.1f}% of a core "
        f"({', '.join(f'{s} {busy[s]:.1f}%' for s in SERVICES)}), their Kafka "
        f"{busy['kafka']:.1f}%; the same Kafka with no client {bare:.1f}% "
        f"({figures['kafka_vs_alone']}x)"
    )


if __name__ == "__main__":
    main()
