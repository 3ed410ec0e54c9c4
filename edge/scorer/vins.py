"""Vehicle token -> VIN through the vault, for routing a payment decision to its vehicle.

Every reveal is audited by the vault. A vehicle pays many times an hour, so the answer is kept
for ``ttl_s`` (bounded in size): the audit log shows the scorer reading each vehicle's VIN at
most once per ttl, not once per payment, and an erased vehicle stops resolving within a ttl.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("scorer.vins")


class Revealer(Protocol):
    def reveal(self, token: str, actor: str) -> str: ...


class VinCache:
    def __init__(
        self,
        vault: Revealer,
        ttl_s: float = 300.0,
        max_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vault = vault
        self.ttl_s = ttl_s
        self.max_size = max_size
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.reveals = 0

    def __call__(self, vehicle_token: str) -> str | None:
        now = self.clock()
        hit = self._cache.get(vehicle_token)
        if hit is not None and now - hit[0] < self.ttl_s:
            self._cache.move_to_end(vehicle_token)
            return hit[1]
        from edge.vault.errors import VaultError

        try:
            vin = self.vault.reveal(vehicle_token, actor="scorer")
        except VaultError as exc:
            log.warning("vehicle token %s: %s", vehicle_token[:12], exc)
            return None
        self.reveals += 1
        self._cache[vehicle_token] = (now, vin)
        self._cache.move_to_end(vehicle_token)
        while len(self._cache) > self.max_size:
            self._cache.popitem(last=False)
        return vin
