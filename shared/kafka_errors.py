"""Kafka client errors in a service's log, without the flood.

While a broker is away, librdkafka reports every failed connect to ``error_cb``, several a
second. :class:`ErrorLog` writes one line per kind of error per ``every_s``, with how many of
that kind it left out since the last line.

>>> from confluent_kafka import KafkaError
>>> now = [0.0]
>>> quiet = ErrorLog(logging.getLogger("demo"), every_s=30.0, clock=lambda: now[0])
>>> [quiet.line(KafkaError(KafkaError._TRANSPORT, "refused")) for _ in range(3)]
['Kafka: KafkaError{code=_TRANSPORT,val=-195,str="refused"}', None, None]
>>> now[0] = 31.0
>>> quiet.line(KafkaError(KafkaError._TRANSPORT, "refused"))
'Kafka: KafkaError{code=_TRANSPORT,val=-195,str="refused"} (2 more like it in the last 31s)'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError


class ErrorLog:
    """An ``error_cb`` that logs at most one line per kind of error per ``every_s``
    (``"<prefix>Kafka: <error> (N more like it in the last Ts)"``)."""

    def __init__(
        self,
        logger: logging.Logger,
        prefix: str = "",
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.prefix = prefix
        self.every_s = every_s
        self.clock = clock
        self._seen: dict[int, tuple[float, int]] = {}  # code -> (last logged, left out since)

    def line(self, err: KafkaError) -> str | None:
        """The line to log for ``err`` now, or None while its kind keeps quiet."""
        now = self.clock()
        seen = self._seen.get(err.code())
        if seen is not None and now - seen[0] < self.every_s:
            self._seen[err.code()] = (seen[0], seen[1] + 1)
            return None
        self._seen[err.code()] = (now, 0)
        more = (
            f" ({seen[1]} more like it in the last {now - seen[0]:.0f}s)"
            if seen and seen[1]
            else ""
        )
        return f"{self.prefix}Kafka: {err}{more}"

    def __call__(self, err: KafkaError) -> None:
        text = self.line(err)
        if text is not None:
            self.logger.warning("%s", text)
