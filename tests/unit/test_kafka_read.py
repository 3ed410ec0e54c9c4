"""shared.kafka_read without a broker: what an unreachable cluster gives the caller."""

from __future__ import annotations

import time

import pytest

from shared.infra.ports import free_ports
from shared.kafka_read import read_to_end


class Unreadable(Exception):
    pass


def test_an_unreachable_cluster_raises_the_callers_error_in_time() -> None:
    port = free_ports(1)[0]  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(Unreadable, match="cannot read models"):
        read_to_end(f"127.0.0.1:{port}", "models", lambda _m: None, error=Unreadable, timeout_s=2.0)
    assert time.monotonic() - t0 < 20
