"""Running ``fleetsentry demo`` as a user does, on ports of its own, and finding what it
left behind."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared.infra.ports import free_ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class DemoPorts:
    edge: int
    ctrl: int
    mqtt: int
    cloud: list[int]
    cloud_ctrl: list[int]
    dashboard: int
    metrics: int


def demo_ports() -> DemoPorts:
    """Ports for both gateways (the demo puts gateway 2's edge Kafka 200 above gateway 1's
    and its Mosquitto one above), the cloud, the dashboard and the metrics."""
    for _ in range(50):
        p = free_ports(12)
        edge, ctrl, mqtt = p[0], p[1], p[2]
        others = [edge + 200, ctrl + 200, mqtt + 1]
        metrics = [p[11] + i for i in range(8)] + [p[11] + 100 + i for i in range(8)]
        # None of them twice: free_ports' own ports are free again once it returns, so a
        # metrics port equal to one of them (a cloud broker's, say) would pass _free.
        taken = p[:11] + others + metrics  # p[11] is metrics[0]
        if all(_free(x) for x in others + metrics) and len(set(taken)) == len(taken):
            return DemoPorts(
                edge=edge,
                ctrl=ctrl,
                mqtt=mqtt,
                cloud=p[3:6],
                cloud_ctrl=p[6:9],
                dashboard=p[9],
                metrics=p[11],
            )
    raise RuntimeError("no free ports for the demo")


def demo_command(home: Path, ports: DemoPorts, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shared.cli",
        "demo",
        "--home",
        str(home),
        "--edge-port",
        str(ports.edge),
        "--edge-controller-port",
        str(ports.ctrl),
        "--mqtt-port",
        str(ports.mqtt),
        "--cloud-ports",
        ",".join(map(str, ports.cloud)),
        "--cloud-controller-ports",
        ",".join(map(str, ports.cloud_ctrl)),
        "--dashboard-port",
        str(ports.dashboard),
        "--metrics-port",
        str(ports.metrics),
        *options,
    ]


def descendants(pid: int) -> dict[int, float]:
    """pid -> start time of every live descendant of ``pid``, those in sessions of their own
    too (a new session leaves the parent as it is)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for child in children:
        try:
            out[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            pass
    return out


def still_running(seen: dict[int, float]) -> list[str]:
    """Those of ``seen`` (pid -> start time) still alive: the same pid and start time (so not
    a reused pid), not a zombie (those wait for a reaper that may not be the demo)."""
    out = []
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid}: {' '.join(proc.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            pass
    return out


def naming(path: Path) -> list[str]:
    """Live processes whose command line names ``path`` (brokers, MirrorMaker, services and
    simulators of a demo under it), wherever they were started from."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(f"{proc.info['pid']}: {cmd[:200]}")
    return out
