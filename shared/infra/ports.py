"""Port checks and free-port allocation on loopback."""

from __future__ import annotations

import contextlib
import errno
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


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now, outside the ephemeral range (held together)."""
    import random

    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in random.sample(range(*_RANGE), 2000):
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                continue
            ports.append(port)
        if len(ports) < count:
            raise OSError(f"found only {len(ports)} free ports in {_RANGE}")
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
