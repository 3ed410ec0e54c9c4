"""A token bucket per vehicle, with memory bounded whatever vehicles appear.

Each vehicle may send ``rate`` messages per second on average and ``burst`` at once (a vehicle
back from a tunnel sends what it buffered). The bucket is keyed by the VIN of the topic, which
the broker's ACL binds to the vehicle's own username, so no vehicle can spend another's tokens.

A bucket left alone for ``burst / rate`` seconds is full again, which is exactly the state of a
vehicle never seen: forgetting it changes no decision. Idle buckets are swept on that period,
so memory follows the vehicles active in the last few minutes, and ``max_vehicles`` caps it
even then (the oldest buckets go first: they only get a full burst back).

>>> limiter = VehicleRateLimiter(rate=1.0, burst=2)
>>> [limiter.allow("V1", 0.0), limiter.allow("V1", 0.0), limiter.allow("V1", 0.0)]
[True, True, False]
>>> limiter.allow("V1", 1.0), limiter.allow("V2", 1.0)
(True, True)
"""

from __future__ import annotations

from itertools import islice

# Above what one bridge process serves (~60,000 events/s, that many vehicles at 1 Hz), at ~200
# bytes a bucket (20 MB at the cap): it only matters if something else is wrong, and a bucket
# dropped at the cap is merely full again.
MAX_VEHICLES = 100_000


class VehicleRateLimiter:
    """``allow(vin, now)``: take one token from the vehicle's bucket, if it has one."""

    def __init__(self, rate: float, burst: int, max_vehicles: int = MAX_VEHICLES) -> None:
        if rate <= 0 or burst < 1 or max_vehicles < 1:
            raise ValueError(
                f"rate {rate} must be > 0, burst {burst} and max_vehicles {max_vehicles} >= 1"
            )
        self.rate = rate
        self.burst = float(burst)
        self.max_vehicles = max_vehicles
        # Seconds after which an untouched bucket is full again (and can be forgotten).
        self.refill_s = self.burst / rate
        # vin -> [tokens, time of the last update]; a list so allow() updates it in place.
        self._buckets: dict[str, list[float]] = {}
        self._next_sweep = float("-inf")

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, vin: str, now: float) -> bool:
        """True: the message may pass (a token was taken). ``now`` is a monotonic clock."""
        bucket = self._buckets.get(vin)
        if bucket is None:
            if now >= self._next_sweep or len(self._buckets) >= self.max_vehicles:
                self._sweep(now)
            self._buckets[vin] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _sweep(self, now: float) -> None:
        """Forget buckets that are full again; at the cap, also the oldest ones."""
        if now >= self._next_sweep:
            idle_since = now - self.refill_s
            for vin in [v for v, b in self._buckets.items() if b[1] <= idle_since]:
                del self._buckets[vin]
            self._next_sweep = now + max(1.0, self.refill_s)
        excess = len(self._buckets) - self.max_vehicles + 1
        if excess > 0:
            # Dicts keep insertion order: these are the vehicles first seen longest ago.
            for vin in list(islice(self._buckets, excess)):
                del self._buckets[vin]
