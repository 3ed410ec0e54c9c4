"""The gateway's services: what ``fleetsentry edge run`` supervises.

Adding a service is one line in :data:`SERVICES`. The target is ``"module:function"``; the
function takes a :class:`ServiceContext` and runs until ``ctx.stop`` is set (SIGTERM/SIGINT)::

    def run(ctx: ServiceContext) -> None:
        component = Thing(ctx.config)
        component.start()
        try:
            while not ctx.stop.is_set():
                component.step(timeout=0.5)
        finally:
            component.close()

Every service gets a CLI subcommand of its own name (``fleetsentry edge bridge --config ...``)
that runs it alone, and a Prometheus endpoint on ``[metrics] base_port + metrics_offset``
(+ 10 per extra process of the same service, so offsets stay below 10).
"""

from __future__ import annotations

import importlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from edge.config import EdgeConfig
from shared.errors import ConfigError


@dataclass(frozen=True)
class Service:
    name: str
    target: str
    metrics_offset: int
    help: str
    # Dotted EdgeConfig attribute holding how many processes to run (default: one).
    processes: str | None = None


SERVICES: tuple[Service, ...] = (
    Service(
        "bridge",
        "edge.bridge.service:run",
        0,
        "MQTT -> raw.* (validated; rejects to dlq.ingest).",
        processes="bridge.processes",
    ),
    Service(
        "enricher",
        "edge.enricher.service:run",
        1,
        "raw.* -> PII vault + anon.* (tokens, features), exactly once.",
    ),
    Service(
        "scorer",
        "edge.scorer.scorer:run",
        2,
        "anon.* -> scores.*, alerts, decisions to devices (int8 models), exactly once.",
    ),
    Service(
        "agent",
        "edge.agent.service:run",
        3,
        "cloud.models -> verify, shadow-score, switch the scorer's model, roll back.",
    ),
)


@dataclass
class ServiceContext:
    """What a running service receives. ``stop`` is set on SIGTERM/SIGINT."""

    name: str
    config: EdgeConfig
    config_path: Path | None
    instance: int
    stop: threading.Event
    metrics_port: int | None


def by_name(name: str) -> Service:
    for svc in SERVICES:
        if svc.name == name:
            return svc
    raise ConfigError(f"unknown service {name!r}; known: {[s.name for s in SERVICES]}")


def process_count(service: Service, config: EdgeConfig) -> int:
    if service.processes is None:
        return 1
    value: Any = config
    for part in service.processes.split("."):
        value = getattr(value, part)
    return int(value)


def metrics_port(service: Service, config: EdgeConfig, instance: int) -> int | None:
    base = config.metrics.base_port
    return base + service.metrics_offset + 10 * instance if base else None


def load_target(service: Service) -> Callable[[ServiceContext], None]:
    module, _, func = service.target.partition(":")
    fn: Callable[[ServiceContext], None] = getattr(importlib.import_module(module), func)
    return fn


def _relay_signals(stop: threading.Event) -> None:
    """Set ``stop`` from a thread as soon as SIGTERM/SIGINT arrives.

    Python runs a signal handler only when the main thread is back in the interpreter, and a
    Kafka client call can hold it in C for a minute (a transaction commit while Kafka is
    away). The interpreter also writes each signal's number to the wakeup fd at once; this
    thread reads it, so the watchdog (``edge.transactions``) sees the stop in time.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    wanted = {int(signal.SIGTERM), int(signal.SIGINT)}

    def relay() -> None:
        while data := reader.recv(64):
            if wanted.intersection(data):
                stop.set()

    threading.Thread(target=relay, name="signals", daemon=True).start()
    # Kept for the life of the process: the wakeup fd must stay open.
    _SIGNAL_SOCKETS.extend((reader, writer))


_SIGNAL_SOCKETS: list[socket.socket] = []


def run_service(
    service: Service,
    config: EdgeConfig,
    config_path: Path | None = None,
    instance: int = 0,
    metrics_port_override: int | None = None,
) -> None:
    """Run one service in this process until SIGTERM/SIGINT (the supervisor's child entry)."""
    from edge import metrics
    from shared import streams

    # The operator's declared streams, beside the built-in ones; a bad declaration stops the
    # service here, naming its file and key.
    streams.use_declarations(config.streams.dir)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(service.name).info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    _relay_signals(stop)
    port = (
        metrics_port(service, config, instance)
        if metrics_port_override is None
        else metrics_port_override or None
    )
    server = metrics.serve(config.metrics.host, port)
    target = load_target(service)
    try:
        target(ServiceContext(service.name, config, config_path, instance, stop, port))
    finally:
        if server is not None:
            server.shutdown()
