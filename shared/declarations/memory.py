"""How long a stream's features remember an event: the tail of an alert episode.

After a fault ends, rolling features still carry it for a while: an alert raised that soon
after is the fault's tail, not a new event (the trainer's false-episode budget, drift checks
and episode reports leave that time out). It follows from the declaration:

- a ``zscore`` (an exponentially weighted mean and variance of weight ``alpha``) remembers an
  event until its weight falls under 5 %: the smallest ``n`` with ``(1 - alpha) ** n <= 0.05``
  events (59 for the default 0.05);
- ``rate``, ``delta`` and ``gap`` remember one event;
- a named transform its own ``memory_s`` seconds (the shipped telemetry's coolant trend);

in seconds at the stream's ``interval_s`` (the devices' usual time between events) or one
the caller measured. A stream whose alerts are single events has no episode, so no tail.
"""

from __future__ import annotations

import math

from shared.declarations import named
from shared.declarations.schema import EventAlerts, Stream

# An event is forgotten once its weight in a smoothed statistic falls under this.
FORGOTTEN = 0.05


def zscore_events(alpha: float) -> int:
    """Events until one weighs under FORGOTTEN in an EWMA of weight ``alpha``."""
    return math.ceil(math.log(FORGOTTEN) / math.log(1.0 - alpha))


def memory_events(stream: Stream) -> int:
    """The longest any of the stream's per-device features remembers, in events."""
    events = 0
    for f in stream.features:
        step = f.then or f.transform
        if step == "zscore":
            events = max(events, zscore_events(float(f.params.get("alpha", 0.05))))
        elif step in ("rate", "delta", "gap"):
            events = max(events, 1)
    return events


def memory_s(stream: Stream, interval_s: float | None = None) -> float:
    """Seconds after an event during which the stream's features still carry it: its events'
    memory at ``interval_s`` (default: the declared one; neither: the named transforms' own
    only), 0 when its alerts are single events."""
    if isinstance(stream.alerts, EventAlerts):
        return 0.0
    interval = interval_s if interval_s is not None else stream.interval_s
    seconds = memory_events(stream) * interval if interval is not None else 0.0
    for f in stream.features:
        if f.transform == "named":
            entry = named.get(f.params["named"])
            if entry is not None:
                seconds = max(seconds, entry.memory_s)
    return round(seconds, 3)


def needs_interval(stream: Stream) -> bool:
    """Whether :func:`memory_s` wants an interval measured: none is declared, and events are
    what the stream's features remember."""
    return (
        stream.interval_s is None
        and not isinstance(stream.alerts, EventAlerts)
        and memory_events(stream) > 0
    )
