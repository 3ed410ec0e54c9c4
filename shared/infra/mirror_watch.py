"""MirrorMaker under a watchdog: ``fleetsentry infra mirror run --properties FILE -- JAVA...``.

Connect kills a task for good on an error it does not retry (the cloud withdrew the gateway's
write permission for a while; now and then its own exactly-once commit, "OffsetStorageWriter
is already flushing"), and MirrorMaker's process runs on: the partitions that task copied
never cross again, and an init system that restarts the process when it exits sees nothing
wrong. A gateway installed with Ansible runs MirrorMaker under this watchdog instead:

- it starts the JVM (``argv``) as its child, which dies with it;
- every ``interval`` seconds it reads both flows' Connect status topics, logging in as
  MirrorMaker does (from its config);
- when a source connector or task has failed since the JVM started, it logs which and why,
  stops the JVM and exits 1, for systemd (or fleetsentry-service) to start MirrorMaker again,
  read cap and all. Exactly-once makes that restart safe: nothing lost, nothing twice;
- SIGTERM, SIGINT and SIGHUP go to the JVM; the watchdog exits with the JVM's status.
"""

from __future__ import annotations

import ctypes
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from shared.config import Secret
from shared.errors import ConfigError
from shared.infra.mirror import CLOUD_ALIAS, connect_statuses, failed_since
from shared.infra.process import end_child
from shared.kafka_config import KafkaSettings, Target

# The watchdog's exit status when it stopped MirrorMaker over a failed task.
TASK_FAILED_EXIT = 1
_PR_SET_PDEATHSIG = 1
_JAAS = re.compile(r'username=("(?:[^"\\]|\\.)*")\s+password=("(?:[^"\\]|\\.)*")')


def read_properties(path: Path) -> dict[str, str]:
    """``key = value`` lines of a Java properties file as MirrorMaker's are written (no
    continuation lines or escapes); comments and blank lines skipped."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def logins(path: Path) -> tuple[str, Target, Target]:
    """(gateway alias, edge login, cloud login) from MirrorMaker's config (``Mirror.properties``
    or the Ansible role's mm2.properties)."""
    props = read_properties(path)
    aliases = [a.strip() for a in props.get("clusters", "").split(",") if a.strip()]
    edges = [a for a in aliases if a != CLOUD_ALIAS]
    if CLOUD_ALIAS not in aliases or len(edges) != 1:
        raise ConfigError(
            f"{path}: expected 'clusters = <edge id>, {CLOUD_ALIAS}', found "
            f"{props.get('clusters', 'none')!r}",
            setting="clusters",
        )
    return edges[0], _login(props, edges[0], path), _login(props, CLOUD_ALIAS, path)


def _login(props: dict[str, str], alias: str, path: Path) -> Target:
    def get(key: str) -> str:
        return props.get(f"{alias}.{key}", "")

    bootstrap = get("bootstrap.servers")
    if not bootstrap:
        raise ConfigError(f"{path}: no {alias}.bootstrap.servers", setting="bootstrap.servers")
    protocol = get("security.protocol").upper() or "PLAINTEXT"
    ca = get("ssl.truststore.location") if get("ssl.truststore.type").upper() == "PEM" else ""
    if protocol == "PLAINTEXT":
        return bootstrap
    fields: dict[str, Any] = {"bootstrap": bootstrap, "username": "", "ca_file": None}
    if ca:
        fields["ca_file"] = Path(ca)
    if protocol.startswith("SASL"):
        found = _JAAS.search(get("sasl.jaas.config"))
        if not found:
            raise ConfigError(
                f"{path}: {alias}.sasl.jaas.config names no username and password",
                setting=f"{alias}.sasl.jaas.config",
            )
        fields["username"] = json.loads(found.group(1))
        fields["password"] = Secret(json.loads(found.group(2)))
        fields["mechanism"] = get("sasl.mechanism") or "SCRAM-SHA-512"
    return KafkaSettings(**fields)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the watchdog dies, even of SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _exit_status(code: int) -> int:
    return code if code >= 0 else 128 - code


def run(
    argv: list[str],
    properties: Path,
    interval: float = 30.0,
    stop_timeout: float = 60.0,
    out: TextIO = sys.stderr,
) -> int:
    """Run MirrorMaker (``argv``) until it exits or a task of it fails; returns the exit
    status (the JVM's, or TASK_FAILED_EXIT)."""
    edge_id, edge, cloud = logins(properties)
    started = time.time()
    child = subprocess.Popen(argv, preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads yet

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            return _exit_status(child.wait(timeout=interval))
        except subprocess.TimeoutExpired:
            pass
        failed = failed_since(connect_statuses(edge_id, edge, cloud, timeout=5.0), started)
        if not failed:
            continue
        for name, error in sorted(failed.items()):
            print(f"MirrorMaker {edge_id}: {name} failed: {error or 'no reason given'}", file=out)
        print(
            f"MirrorMaker {edge_id}: Connect does not restart a failed task; stopping "
            "MirrorMaker so that it is started again",
            file=out,
            flush=True,
        )
        end_child(child, stop_timeout)
        return TASK_FAILED_EXIT
