"""How long `fleetsentry infra up` takes: cold (fresh data dirs), warm (after `down`), no-op.

Baseline, measured in the same run: one bare Kafka node (already formatted) started directly
with `java -cp ... kafka.Kafka` until it answers a metadata request. The stack starts five
processes (4 Kafka nodes and Mosquitto) on a 2-core machine, so the ratio says how much the
provisioning adds over the JVMs' own start-up. Target: warm `infra up` <= 15 s.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.infra import jars, process  # noqa: E402
from shared.infra.kafka import KafkaCluster, KafkaNode  # noqa: E402
from shared.infra.ports import free_ports  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from tests.support import free_infra_settings  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_node(home: Path, libs: Path, java: str) -> float:
    p, c = free_ports(2)
    cluster = KafkaCluster("bare", home, (KafkaNode(1, p, c),))
    cluster.start(libs, java)  # formats, starts
    cluster.wait_healthy()
    cluster.stop()
    start = time.perf_counter()
    pid = process.spawn(
        cluster._argv(cluster.nodes[0], libs, java),
        cluster.pid_file(cluster.nodes[0]),
        cluster.log_dir(cluster.nodes[0]) / "stdout.log",
    )
    cluster.wait_healthy()
    elapsed = time.perf_counter() - start
    process.stop([pid])
    return elapsed


def main() -> None:
    java = jars.java_binary()
    libs = jars.kafka_libs()
    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-") as tmp:
        baseline = bare_node(Path(tmp) / "bare", libs, java)
        stack = Stack(free_infra_settings(Path(tmp) / "stack"), quiet=True)
        try:
            cold = timed(stack.up)
            noop = timed(stack.up)
            stack.down()
            warm = timed(stack.up)
        finally:
            stack.down()
    figures = {
        "bench": "infra_startup",
        "cold_up_s": round(cold, 2),
        "warm_up_s": round(warm, 2),
        "noop_up_s": round(noop, 2),
        "baseline_bare_kafka_node_s": round(baseline, 2),
        "warm_vs_baseline": round(warm / baseline, 2),
        "warm_target_s": 15.0,
        "warm_meets_target": warm <= 15.0,
        "cpus": len(__import__("os").sched_getaffinity(0)),
    }
    print(json.dumps(figures))
    print(
        f"infra up: cold {cold:.1f}s, warm {warm:.1f}s, no-op {noop:.2f}s; one bare Kafka node "
        f"{baseline:.1f}s (warm stack = {warm / baseline:.1f}x a bare node; target warm <= 15s)"
    )


if __name__ == "__main__":
    main()
