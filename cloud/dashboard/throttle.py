"""Sign-in throttling: failed sign-ins counted per user name and per client address.

Every attempt counts as a failure before its password is checked, so a burst of concurrent
guesses cannot all slip in before the first is judged; a success takes its attempt back.
``max_failures`` failures of one name (``per_address`` of one address) within ``window_s``
lock it for ``lockout_s``; the lock is answered before any hashing. Memory is bounded by
``max_tracked`` entries: the least recently touched unlocked entry goes first, so an attacker
cycling names or addresses evicts their own one-off entries before anybody's lock.

>>> t = SignInThrottle(max_failures=2, per_address=10, window_s=60, lockout_s=300,
...                    clock=lambda: 0.0)
>>> t.attempt("alice", "10.0.0.1"); t.attempt("alice", "10.0.0.1")
>>> t.retry_after("alice", "10.0.0.9")
300
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class SignInThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 5,
        per_address: int = 20,
        window_s: float = 900.0,
        lockout_s: float = 900.0,
        max_tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.per_address = per_address
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_tracked = max_tracked
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._locked: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries) + len(self._locked)

    def retry_after(self, name: str, address: str) -> int | None:
        """Seconds until ``name`` may try again from ``address``; None when it may now."""
        now = self._clock()
        with self._lock:
            waits = [
                e.locked_until - now
                for key in (_name(name), _addr(address))
                if (e := self._locked.get(key)) is not None and e.locked_until > now
            ]
        return math.ceil(max(waits)) if waits else None

    def attempt(self, name: str, address: str) -> None:
        """Count an attempt as failed until :meth:`succeeded` says otherwise."""
        now = self._clock()
        with self._lock:
            self._fail(_name(name), self.max_failures, now)
            self._fail(_addr(address), self.per_address, now)
            self._trim(now)

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._entries.pop(_name(name), None)
            self._locked.pop(_name(name), None)
            entry = self._entries.get(_addr(address))
            if entry is not None and entry.failures:
                entry.failures.pop()

    def _fail(self, key: str, limit: int, now: float) -> None:
        locked = self._locked.get(key)
        if locked is not None:
            if locked.locked_until > now:
                return
            del self._locked[key]
        entry = self._entries.pop(key, None) or _Entry()
        self._entries[key] = entry  # most recently touched last
        while entry.failures and entry.failures[0] <= now - self.window_s:
            entry.failures.popleft()
        entry.failures.append(now)
        if len(entry.failures) >= limit:
            del self._entries[key]
            entry.failures.clear()
            entry.locked_until = now + self.lockout_s
            self._locked[key] = entry

    def _trim(self, now: float) -> None:
        # Locks are kept in the order they were set, which is the order they expire in.
        while self._locked and next(iter(self._locked.values())).locked_until <= now:
            self._locked.popitem(last=False)
        while len(self) > self.max_tracked and self._entries:
            self._entries.popitem(last=False)
        while len(self) > self.max_tracked:  # only locks left: the soonest to expire goes
            self._locked.popitem(last=False)


def _name(name: str) -> str:
    return "u:" + name[:128]  # no real name is longer; a megabyte of one is not kept


def _addr(address: str) -> str:
    return "a:" + address
