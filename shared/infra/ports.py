"""Port checks and free-port allocation on loopback."""

from __future__ import annotations

import contextlib
import errno
import os
import socket


def is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


# Below Linux's ephemeral range (32768-60999): a port the OS hands out with bind(0) is also
# what it hands busy Kafka clients as source ports, so a broker started minutes after its
# port was picked could find it taken. Ports from here are only ever taken on purpose.
_RANGE = (20000, 32000)
# Processes picking ports side by side (parallel test workers) each get their own slice:
# FLEETSENTRY_PORT_RANGE=LOW-HIGH (HIGH exclusive), within or instead of the range above.
RANGE_ENV = "FLEETSENTRY_PORT_RANGE"


def port_range() -> tuple[int, int]:
    value = os.environ.get(RANGE_ENV, "")
    if not value:
        return _RANGE
    try:
        low, high = (int(v) for v in value.split("-"))
    except ValueError:
        raise ValueError(f"{RANGE_ENV}={value!r}: expected LOW-HIGH, e.g. 20000-26000") from None
    if not 1024 <= low < high <= 65536:
        raise ValueError(f"{RANGE_ENV}={value!r}: expected 1024 <= LOW < HIGH <= 65536")
    return low, high


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now, outside the ephemeral range (held together)."""
    import random

    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        span = range(*port_range())
        for port in random.sample(span, min(2000, len(span))):
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                continue
            ports.append(port)
        if len(ports) < count:
            raise OSError(f"found only {len(ports)} free ports in {span}")
        return ports


def wait_listening(host: str, port: int, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False
