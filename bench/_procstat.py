"""CPU time of processes from /proc, for the benches (Linux)."""

from __future__ import annotations

import os
from pathlib import Path


def stat_cpu_seconds(stat_path: str) -> float:
    """utime + stime from a /proc ``stat`` file (a process's: all its threads; or one task's)."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads); 0.0 once it has exited."""
    try:
        return stat_cpu_seconds(f"/proc/{pid}/stat")
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_cpu_seconds(pid: int, name_part: str) -> float:
    """utime + stime of those threads of ``pid`` whose name contains ``name_part``."""
    total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            if name_part in Path(f"/proc/{pid}/task/{tid}/comm").read_text():
                total += stat_cpu_seconds(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue  # the thread ended
    return total


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
