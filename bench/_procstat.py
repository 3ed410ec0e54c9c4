"""CPU time, memory and children of processes, for the benches (psutil; thread names and peak
RSS, which psutil does not give on Linux, from /proc)."""

from __future__ import annotations

from pathlib import Path

import psutil


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads); 0.0 once it has exited."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def thread_cpu_seconds(pid: int, name_part: str) -> float:
    """utime + stime of those threads of ``pid`` whose name contains ``name_part``."""
    try:
        threads = psutil.Process(pid).threads()
    except psutil.Error:
        return 0.0
    total = 0.0
    for t in threads:
        try:
            if name_part in Path(f"/proc/{pid}/task/{t.id}/comm").read_text():
                total += t.user_time + t.system_time
        except OSError:
            continue  # the thread ended
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot.

    busy: not idle, steal included; steal: time the hypervisor gave to someone else while
    this machine wanted it.
    """
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + t.irq + t.softirq + t.steal
    return busy, t.steal


def peak_rss_mb(pid: int | None = None) -> float:
    """The most resident memory a process (None: this one) has had, in MiB (VmHWM)."""
    status = Path(f"/proc/{pid if pid is not None else 'self'}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []
