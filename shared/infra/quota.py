"""A byte-rate cap on what MirrorMaker reads from the gateway's Kafka (a Kafka client quota).

After a cloud outage MirrorMaker reads the backlog as fast as the edge broker serves it, and
sends all of it over the gateway's uplink. A ``consumer_byte_rate`` quota on the edge Kafka for
MirrorMaker's login makes the broker itself delay its fetch responses so that, averaged over
the broker's quota window (11 samples of 1 s by default), MirrorMaker reads no more than the
cap. The cap counts the bytes of the batches as stored on the edge (compressed by the
gateway's producers); MirrorMaker re-compresses them for the cloud, so the uplink carries
about as much (the ratio is measured in ``bench/replication.py``).

The gateway owns its Kafka, so the cap needs nothing from the cloud. confluent-kafka has no
client-quota admin call; Kafka's own ``ConfigCommand`` (in the jars the brokers run from)
applies it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from shared.errors import ConfigError
from shared.infra.errors import InfraError

CONFIG_COMMAND = "kafka.admin.ConfigCommand"
QUOTA_KEY = "consumer_byte_rate"
# Below this, one record batch of a busy gateway takes seconds to cross: surely a typo.
MIN_BYTES_PER_S = 1024


def validate_rate(value: object, setting: str) -> int:
    """``value`` as a byte rate: 0 means unlimited; otherwise at least MIN_BYTES_PER_S."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"expected an integer number of bytes per second, got {value!r}", setting=setting
        )
    if value != 0 and value < MIN_BYTES_PER_S:
        raise ConfigError(
            f"{value} bytes/s is below the minimum of {MIN_BYTES_PER_S}; use 0 "
            f"for no limit, or e.g. 262144 for 256 KiB/s",
            setting=setting,
        )
    return value


def fetch_max_bytes(rate: int) -> int:
    """Largest fetch response for a capped reader: about one second of the cap.

    The broker enforces the cap by delaying the *next* fetch after an oversized one, so a
    single 50 MB response (the consumer default) would still cross at the link's full speed.
    """
    return max(rate, 64 * 1024)


def client_properties(login: Mapping[str, str]) -> str:
    """The ``--command-config`` file: the login's properties without the bootstrap address."""
    return "".join(f"{k}={v}\n" for k, v in login.items() if k != "bootstrap.servers")


def config_command_argv(
    java: str, classpath: str, bootstrap: str, command_config: Path, user: str, rate: int
) -> list[str]:
    """``kafka-configs.sh`` setting (rate > 0) or removing (0) ``user``'s read cap."""
    change = ["--add-config", f"{QUOTA_KEY}={rate}"] if rate else ["--delete-config", QUOTA_KEY]
    return [
        java,
        "-Xmx96m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dlog4j2.level=WARN",
        "-cp",
        classpath,
        CONFIG_COMMAND,
        "--bootstrap-server",
        bootstrap,
        "--command-config",
        str(command_config),
        "--alter",
        "--entity-type",
        "users",
        "--entity-name",
        user,
        *change,
    ]


def apply(argv: list[str], timeout: float = 120.0) -> None:
    """Run ``argv`` (from :func:`config_command_argv`); an InfraError says why it failed.

    Idempotent: setting the same cap again, or removing a cap that is not there, succeeds.
    """
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InfraError(
            f"setting MirrorMaker's read cap on the edge Kafka took over "
            f"{timeout:.0f}s; is the edge Kafka up?"
        ) from exc
    removing = "--delete-config" in argv
    if done.returncode != 0 and removing and f"Invalid config(s): {QUOTA_KEY}" in done.stderr:
        return  # there was no cap to remove
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-1500:]
        raise InfraError(
            f"could not set MirrorMaker's read cap ({QUOTA_KEY}) on the edge "
            f"Kafka (exit {done.returncode}); is it up and does the mirror's "
            f"login work?\n{tail}"
        )
