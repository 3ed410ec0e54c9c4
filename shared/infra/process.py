"""Start, find and stop detached broker processes through pid files."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from shared.process_group import signals_held, started


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def spawn(
    argv: Sequence[str],
    pid_file: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, detached from ours, and record its pid.

    The child gets a raised fd limit (brokers hold one socket per client) and its own
    process group, so a Ctrl-C in the terminal that ran ``infra up`` does not reach it.
    A :class:`shared.process_group.ProcessGroup` adopting spawns records it; a Ctrl-C
    arriving meanwhile waits until the child is recorded there and in its pid file.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with signals_held():
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_raise_fd_limit,
                env=env,
                cwd=cwd,
            )
        started(proc.pid)
        pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pid_file: Path, marker: str) -> int | None:
    """The live pid recorded in ``pid_file`` whose command line contains ``marker``, or None.

    Checking the command line guards against a recycled pid belonging to someone else.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if is_ours(pid, marker) else None


def is_ours(pid: int, marker: str) -> bool:
    try:
        proc = psutil.Process(pid)
        # A zombie still has a /proc entry but no command line worth trusting.
        return proc.status() != psutil.STATUS_ZOMBIE and marker in " ".join(proc.cmdline())
    except psutil.Error:  # gone, a zombie, or not ours to look at
        return False


def stop(pids: Sequence[int], timeout: float = 30.0) -> list[int]:
    """SIGTERM every pid, wait up to ``timeout``, then SIGKILL what remains.

    Returns the pids that had to be killed.
    """
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        _reap(alive)
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.1)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    end = time.monotonic() + 5
    while any(_alive(p) for p in alive) and time.monotonic() < end:
        _reap(alive)
        time.sleep(0.05)
    _reap(pids)  # those that exited after the last look are zombies until waited for
    return alive


def end_child(proc: subprocess.Popen[Any], grace: float) -> int:
    """SIGTERM a child this process started, wait up to ``grace`` s, SIGKILL it if it is
    still there; returns its exit code."""
    proc.terminate()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def _reap(pids: Sequence[int]) -> None:
    """Collect the exit status of those of ``pids`` that are our own exited children (spawned
    in this process, as tests do): they stay zombies until waited for. Only these: a wait on
    any child would take the status of children that belong to someone else."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (started by an earlier `infra up`)
            pass
