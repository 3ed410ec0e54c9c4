"""Child processes owned together: each in a session (so a process group) of its own, all
stopped as one however their owner ends.

A child started with ``start_new_session`` is out of reach of the terminal's Ctrl-C and of
its parent's process group: unless someone stops it, it outlives the command that started it.
A :class:`ProcessGroup` records every such child the moment it starts (its own
:meth:`~ProcessGroup.popen`, or any :func:`shared.infra.process.spawn` inside
:meth:`~ProcessGroup.adopting`) and :meth:`~ProcessGroup.close` stops them: SIGTERM to each
child's process group (the child and whatever it started), a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

# Groups that adopt what shared.infra.process.spawn starts (innermost last).
_ADOPTERS: list[ProcessGroup] = []


def started(pid: int) -> None:
    """Report a child started in a session of its own: every adopting group records it."""
    for group in _ADOPTERS:
        group.add(pid)


@contextmanager
def signals_held(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold back SIGINT and SIGTERM (their Python handlers, say a KeyboardInterrupt) until the
    block ends, then deliver them: starting a child and recording it is one step that a Ctrl-C
    cannot cut in two. Outside the main thread (where no handler runs) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        got.append(signum)

    previous: dict[int, Any] = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(got):
            signal.raise_signal(sig)


class ProcessGroup:
    """Children in sessions of their own, stopped together by :meth:`close` (also on leaving
    a ``with`` block, however it is left). ``close`` may be called any number of times."""

    def __init__(self, grace: float = 20.0) -> None:
        self.grace = grace
        self._children: dict[int, subprocess.Popen[bytes] | None] = {}

    def popen(
        self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own, output appended to ``log``, and record it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with signals_held(), open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
            self.add(proc)
        return proc

    def add(self, child: subprocess.Popen[bytes] | int) -> None:
        """Record a child started elsewhere (the leader of its own process group)."""
        if isinstance(child, int):
            self._children.setdefault(child, None)
        else:
            self._children[child.pid] = child

    @contextmanager
    def adopting(self) -> Iterator[ProcessGroup]:
        """Inside the block, every child :func:`shared.infra.process.spawn` starts (brokers,
        MirrorMaker) is recorded here as it starts."""
        _ADOPTERS.append(self)
        try:
            yield self
        finally:
            _ADOPTERS.remove(self)

    @property
    def pids(self) -> list[int]:
        """The recorded children, in the order they started."""
        return list(self._children)

    def alive(self) -> list[int]:
        """The recorded children whose process group still has a live member."""
        return self._live(list(self._children))

    def _live(self, pids: list[int]) -> list[int]:
        self._reap()
        members = _group_members()
        return [pid for pid in pids if members.get(pid)]

    def close(self, grace: float | None = None) -> list[int]:
        """SIGTERM each child's process group (last started first), wait up to ``grace``
        seconds for them all to end, then SIGKILL the groups left. Returns those that needed
        SIGKILL. The children are forgotten: a second call stops only what was added since."""
        grace = self.grace if grace is None else grace
        pids = list(reversed(self._children))
        for pid in self._live(pids):
            _signal_group(pid, signal.SIGTERM)
        left = self._wait(pids, grace)
        for pid in left:
            _signal_group(pid, signal.SIGKILL)
        self._wait(left, 5.0)
        # _live reaps before it looks: a child that died just after was not reaped yet.
        self._reap()
        for pid in pids:
            self._children.pop(pid, None)
        return left

    def _wait(self, pids: list[int], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            left = self._live(pids)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def _reap(self) -> None:
        """Collect the exit status of recorded children that have ended (ours: a zombie until
        waited for). Only these: a wait on any child would take other children's status."""
        for pid, proc in self._children.items():
            if proc is not None:
                proc.poll()
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours, or already collected
                pass

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pgid`` (its leader may have ended while members run)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members() -> dict[int, list[int]]:
    """Process group id -> its live (not zombie) members; only groups that lead a session of
    the same id, as a child started with ``start_new_session`` does (a pid reused after such
    a child ended is not mistaken for it unless it starts a session too)."""
    out: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        try:
            pgid, sid = os.getpgid(proc.pid), os.getsid(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if pgid == sid:
            out.setdefault(pgid, []).append(proc.pid)
    return out
