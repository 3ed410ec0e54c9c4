"""Mosquitto with a generated config: own port, persistence, and who may do what.

Logins and permissions live in Mosquitto's dynamic-security plugin (shipped with Debian's
mosquitto 2.0), not in a password file and ACL file: mosquitto 2.0's ``acl_file`` never checks
SUBSCRIBE, so a vehicle could join the bridge's shared subscription and have the broker drop
the messages assigned to it, and nothing there binds a client id to a login. The plugin denies
by default and binds each vehicle to its own VIN as client id:

- a vehicle (user = client id = its VIN, or another device's id) may publish
  ``fleet/{id}/<stream>`` for each stream known when it is registered (``telemetry``,
  ``payments`` and the declared streams loaded in the registering process, see
  :func:`shared.streams.use_declarations`) and ``fleet/{id}/status``, subscribe to
  ``fleet/{id}/commands`` only and receive nothing else;
- the services' users (``fleetsentry-bridge``, ``fleetsentry-admin``) are the only ones that
  may subscribe to ``fleet/...`` of all vehicles, ``$share/...`` included.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.infra import ports, process
from shared.infra.errors import InfraError, PrerequisiteError, ServiceStartError
from shared.infra.files import write_private
from shared.infra.tls import TlsFiles

ADMIN_USER = "fleetsentry-admin"
BRIDGE_USER = "fleetsentry-bridge"
# mosquitto_passwd's own default; every vehicle connect pays this many PBKDF2 rounds.
PBKDF2_ITERATIONS = 101
# Where Debian (and other multiarch systems) install the dynamic-security plugin.
DYNSEC_PLUGINS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
# Commands per control message: a vehicle takes about 700 bytes, the broker takes 64 KiB.
CONTROL_BATCH = 40
# The plugin rewrites its whole file after every command, so registering N new vehicles in a
# running broker costs O(N^2) (500 take about 6 s). Beyond this many new ones the broker is
# restarted on a regenerated file instead: clients reconnect, sessions and queues persist.
CONTROL_MAX_NEW = 200


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def vehicle_role(vin: str) -> dict[str, Any]:
    """A device's own topics, literally: the plugin has no %u patterns in mosquitto 2.0."""
    from shared import streams

    base = f"fleet/{vin}"
    suffixes = sorted({spec.mqtt_suffix for spec in streams.all_streams()})
    return {
        "rolename": f"vehicle-{vin}",
        "acls": [
            *(_acl("publishClientSend", f"{base}/{suffix}") for suffix in suffixes),
            _acl("publishClientSend", f"{base}/status"),
            _acl("subscribeLiteral", f"{base}/commands"),
            _acl("publishClientReceive", f"{base}/commands"),
        ],
    }


SERVICE_ROLES: dict[str, list[dict[str, Any]]] = {
    # Operators and tests: everything, and the plugin's control topic (never covered by #).
    ADMIN_USER: [
        _acl("publishClientSend", "#"),
        _acl("publishClientReceive", "#"),
        _acl("subscribePattern", "#"),
        _acl("publishClientSend", CONTROL_TOPIC),
        _acl("publishClientReceive", f"{CONTROL_TOPIC}/response"),
    ],
    # The bridge (shared subscription over all vehicles) and the scorer's decisions.
    BRIDGE_USER: [
        _acl("subscribePattern", "fleet/#"),
        _acl("subscribePattern", "$share/+/fleet/#"),
        _acl("publishClientReceive", "fleet/#"),
        _acl("publishClientSend", "fleet/+/commands"),
    ],
}


def hash_password(
    password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """A password-file entry body in mosquitto's ``$7$`` (PBKDF2-SHA512) format."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
SYSTEM_PATHS = ("/usr/sbin/mosquitto",)


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next((p for p in SYSTEM_PATHS if Path(p).exists()), None)
    if not found:
        raise PrerequisiteError(
            "mosquitto was not found. Install Debian's package: apt-get install mosquitto "
            "(run as root, or ask your administrator)."
        )
    return found


def dynsec_plugin() -> str:
    found = next((p for pattern in DYNSEC_PLUGINS for p in sorted(glob.glob(pattern))), None)
    if not found:
        raise PrerequisiteError(
            "mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) was not "
            "found; it ships with Debian's mosquitto 2.0 package: apt-get install mosquitto"
        )
    return found


@dataclass(frozen=True)
class Mosquitto:
    """One broker. With ``tls`` and ``tls_port`` it also listens with TLS on ``tls_port``
    (same host, same logins and roles; clients need no certificate of their own)."""

    home: Path
    port: int
    host: str = "127.0.0.1"
    tls: TlsFiles | None = None
    tls_port: int | None = None

    def __post_init__(self) -> None:
        if (self.tls is None) != (self.tls_port is None):
            raise InfraError("a TLS listener needs both `tls` (CA, cert, key files) and `tls_port`")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls_address(self) -> str | None:
        return f"{self.host}:{self.tls_port}" if self.tls_port is not None else None

    @property
    def config_path(self) -> Path:
        return self.home / "mosquitto.conf"

    @property
    def credentials_path(self) -> Path:
        return self.home / "credentials.json"

    @property
    def dynsec_file(self) -> Path:
        """Logins and roles; the plugin rewrites it whenever they change at run time."""
        return self.home / "dynamic-security.json"

    @property
    def pid_file(self) -> Path:
        return self.home / "mosquitto.pid"

    def config(self) -> str:
        return (
            "# Generated by fleetsentry; edits are overwritten by `fleetsentry infra up`.\n"
            # One set of logins and permissions for every listener (plain and TLS).
            "per_listener_settings false\n"
            # Run as whoever started us: as root, mosquitto would otherwise switch to a
            # `mosquitto` user that cannot read our 0600 files.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"listener {self.port} {self.host}\n"
            "protocol mqtt\n"
            "allow_anonymous false\n"
            f"plugin {dynsec_plugin()}\n"
            f"plugin_opt_config_file {self.dynsec_file}\n"
            "persistence true\n"
            f"persistence_location {self.home / 'data'}/\n"
            "autosave_interval 30\n"
            f"log_dest file {self.home / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages false\n"
            "max_keepalive 300\n"
            "max_inflight_messages 100\n"
            "max_queued_messages 100000\n"
            "max_packet_size 65536\n"
            "set_tcp_nodelay true\n" + self._tls_listener()
        )

    def _tls_listener(self) -> str:
        if self.tls is None:
            return ""
        # per_listener_settings is false: the logins and roles above apply here too.
        return (
            f"listener {self.tls_port} {self.host}\n"
            "protocol mqtt\n"
            f"cafile {self.tls.ca_file}\n"
            f"certfile {self.tls.cert_file}\n"
            f"keyfile {self.tls.key_file}\n"
            "require_certificate false\n"
            "tls_version tlsv1.2\n"
        )

    def _ports(self) -> list[int]:
        return [self.port] + ([self.tls_port] if self.tls_port is not None else [])

    # --- credentials ----------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        """user -> password for the service users (created on first use, kept 0600)."""
        if self.credentials_path.exists():
            creds: dict[str, str] = json.loads(self.credentials_path.read_text())
            return creds
        self.home.mkdir(parents=True, exist_ok=True)
        creds = {ADMIN_USER: secrets.token_urlsafe(18), BRIDGE_USER: secrets.token_urlsafe(18)}
        write_private(self.credentials_path, json.dumps(creds, indent=2) + "\n")
        return creds

    def _vehicle_entries(self) -> dict[str, str]:
        """VIN -> ``$7$`` password hash of every registered vehicle (kept 0600)."""
        path = self.home / "vehicles.passwd"
        if not path.exists():
            return {}
        return dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)

    def register_vehicles(self, vehicles: Mapping[str, str] | Iterable[tuple[str, str]]) -> int:
        """Add or replace vehicle logins (VIN -> password); a running broker takes them at
        once (through the plugin's control topic, as the admin user), or, for more than
        ``CONTROL_MAX_NEW`` new vehicles, after a restart."""
        entries = self._vehicle_entries()
        known = set(entries)
        items = list(vehicles.items() if isinstance(vehicles, Mapping) else vehicles)
        for vin, password in items:
            if not DEVICE_ID.fullmatch(vin):
                raise InfraError(
                    f"{vin!r} is not a device id (a VIN, or 1-64 letters, digits, "
                    "'_', '.', ':' or '-' starting with a letter or digit); "
                    "devices log in with their id"
                )
            entries[vin] = hash_password(password)
        write_private(
            self.home / "vehicles.passwd", "".join(f"{u}:{h}\n" for u, h in sorted(entries.items()))
        )
        if self.pid() is None:
            self._write_dynsec_file()  # read by the broker when it starts
        elif len({vin for vin, _ in items} - known) > CONTROL_MAX_NEW:
            self._restart()
        elif items:
            self._control_register(items)
        return len(entries)

    def dynsec_config(self) -> dict[str, Any]:
        """The plugin's whole state: services, vehicles, roles; everything else denied."""
        clients = [
            _client(user, hash_password(pw), role=user) for user, pw in self.credentials().items()
        ]
        clients += [
            _client(vin, h, role=f"vehicle-{vin}", clientid=vin)
            for vin, h in sorted(self._vehicle_entries().items())
        ]
        roles = [{"rolename": user, "acls": acls} for user, acls in SERVICE_ROLES.items()]
        roles += [vehicle_role(vin) for vin in sorted(self._vehicle_entries())]
        return {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": False,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": clients,
            "groups": [],
            "roles": roles,
        }

    def _write_dynsec_file(self) -> None:
        write_private(self.dynsec_file, json.dumps(self.dynsec_config(), indent=1) + "\n")

    def _control_register(self, vehicles: list[tuple[str, str]]) -> None:
        """Create (or re-password) vehicles in the running broker's plugin."""
        create: list[dict[str, Any]] = []
        for vin, password in vehicles:
            create.append({"command": "createRole", **vehicle_role(vin)})
            create.append(
                {
                    "command": "createClient",
                    "username": vin,
                    "password": password,
                    "clientid": vin,
                    "roles": [{"rolename": f"vehicle-{vin}"}],
                }
            )
        errors = self._control(create)
        # A VIN registered before keeps its client and role: only its password changes.
        again = [
            {"command": "setClientPassword", "username": vin, "password": password}
            for vin, password in vehicles
            if errors.get(("createClient", vin)) == "Client already exists"
        ]
        errors = {
            k: e
            for k, e in errors.items()
            if e not in ("Client already exists", "Role already exists")
        }
        errors.update(self._control(again))
        if errors:
            (command, name), why = next(iter(errors.items()))
            raise InfraError(
                f"mosquitto refused {command} for {name}: {why} "
                f"({len(errors)} errors; see {self.home / 'mosquitto.log'})"
            )

    def _control(
        self, commands: list[dict[str, Any]], timeout: float = 60.0
    ) -> dict[tuple[str, str], str]:
        """Send plugin commands in batches; (command, name) -> error of those that failed."""
        if not commands:
            return {}
        from shared.infra.dynsec_client import ControlClient

        user = ADMIN_USER
        host, port = self._listener()
        with ControlClient(host, port, user, self.credentials()[user], CONTROL_TOPIC) as client:
            errors: dict[tuple[str, str], str] = {}
            for i in range(0, len(commands), CONTROL_BATCH):
                batch = commands[i : i + CONTROL_BATCH]
                for n, cmd in enumerate(batch):
                    cmd["correlationData"] = f"{uuid.uuid4().hex}-{n}"
                for cmd, error in zip(batch, client.send(batch, timeout), strict=True):
                    if error:
                        errors[(cmd["command"], cmd.get("username") or cmd["rolename"])] = error
            return errors

    def _listener(self) -> tuple[str, int]:
        """This broker's plain address (from its config when built without a port, as by
        ``sim register --mosquitto-home``)."""
        if self.port:
            return self.host, self.port
        found = re.search(r"^listener (\d+) (\S+)$", self.config_path.read_text(), re.MULTILINE)
        if not found:
            raise InfraError(f"no listener in {self.config_path}; run `fleetsentry infra up`")
        return found.group(2), int(found.group(1))

    def _restart(self, timeout: float = 15.0) -> None:
        """Stop the broker and start it again on its own config (its listeners, TLS
        included, are whatever `infra up` wrote) and a regenerated logins file."""
        self.stop()
        self._write_dynsec_file()
        process.spawn(
            [mosquitto_binary(), "-c", str(self.config_path)],
            self.pid_file,
            self.home / "stdout.log",
        )
        host, port = self._listener()
        if not ports.wait_listening(host, port, timeout):
            raise ServiceStartError(
                f"mosquitto did not listen on {host}:{port} within "
                f"{timeout}s after a restart; see {self.home}"
            )

    # --- lifecycle ------------------------------------------------------------------------

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        self.credentials()
        for stale in ("passwd", "acl"):  # earlier versions' files: no longer read
            (self.home / stale).unlink(missing_ok=True)
        if self.pid() is None:
            # A running broker's plugin owns the file (it rewrites it on every change).
            self._write_dynsec_file()
        self.config_path.write_text(self.config())

    def pid(self) -> int | None:
        return process.read_pid(self.pid_file, str(self.config_path))

    def start(self) -> int | None:
        binary = mosquitto_binary()
        self.prepare()
        if self.pid() is not None:
            return None
        return process.spawn(
            [binary, "-c", str(self.config_path)], self.pid_file, self.home / "stdout.log"
        )

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                log = self.home / "stdout.log"
                raise ServiceStartError(
                    f"mosquitto exited during start-up; see {log}\n"
                    f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}"
                )
            if all(ports.wait_listening(self.host, p, 0.3) for p in self._ports()):
                return
        raise ServiceStartError(
            f"mosquitto did not listen on {self.host} ports {self._ports()} within {timeout}s"
        )

    def healthy(self) -> bool:
        return self.pid() is not None and all(
            ports.wait_listening(self.host, p, 0.5) for p in self._ports()
        )

    def stop(self, timeout: float = 10.0) -> list[int]:
        pid = self.pid()
        return process.stop([pid], timeout) if pid else []


# Device ids (logins and the topic's middle level): VINs, and declared streams' ids, which
# never hold an MQTT wildcard or level separator.
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def _client(user: str, hashed: str, role: str, clientid: str | None = None) -> dict[str, Any]:
    """A plugin login from a ``$7$iterations$salt$hash`` entry (the same PBKDF2-SHA512)."""
    _, _, iterations, salt, digest = hashed.split("$")
    out: dict[str, Any] = {
        "username": user,
        "password": digest,
        "salt": salt,
        "iterations": int(iterations),
        "roles": [{"rolename": role}],
    }
    if clientid is not None:
        out["clientid"] = clientid
    return out
