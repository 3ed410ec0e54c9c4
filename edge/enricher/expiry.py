"""When each feature state was last written, so states of keys gone quiet can be let go.

Vehicles choose their driver ids and card numbers: each new one adds a state, and without an
end the enricher's memory and its changelog (which a restart reads back whole) grow with
whatever a vehicle sends. A key not written for ``ttl_s`` of processing time (the gateway's
wall clock, which no vehicle controls; device time can be set to anything) expires: its state
leaves memory and gets a tombstone in the changelog, in the transaction of the batch that
expires it, so a restore does not bring it back. Within the TTL a cap (``max_keys``) holds
whatever the rate: past it, the least recently written keys go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class KeyClock:
    """Keys in the order they were last written, each with when (epoch seconds)."""

    def __init__(self, ttl_s: float, max_keys: int | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def touch(self, keys: Iterable[str], now: float) -> None:
        at = self._at
        for key in keys:
            at[key] = now
            at.move_to_end(key)

    def load(self, written: dict[str, float]) -> None:
        """Restore from the changelog: each key's last record time, oldest first."""
        self._at = OrderedDict(sorted(written.items(), key=lambda kv: kv[1]))

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._at.pop(key, None)

    def due(self, now: float) -> bool:
        """Whether anything has expired (cheap: looks at the oldest key only)."""
        if self.max_keys is not None and len(self._at) > self.max_keys:
            return True
        return bool(self._at) and next(iter(self._at.values())) < now - self.ttl_s

    def expire(self, now: float, limit: int) -> list[str]:
        """Take up to ``limit`` keys, oldest first: those not written since ``now - ttl_s``,
        and as many more as keep ``max_keys``."""
        cutoff, at = now - self.ttl_s, self._at
        cap = len(at) if self.max_keys is None else self.max_keys
        out: list[str] = []
        # A clock stepped back leaves a newer key ahead of an older one: that only delays
        # the older one until the newer expires.
        while at and len(out) < limit:
            key, when = next(iter(at.items()))
            if when >= cutoff and len(at) <= cap:
                break
            at.popitem(last=False)
            out.append(key)
        return out
