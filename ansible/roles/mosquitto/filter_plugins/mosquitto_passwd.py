"""Logins for the gateway's broker.

``mosquitto_pbkdf2``: a password in mosquitto's ``$7$`` (PBKDF2-SHA512) format.
``mosquitto_dynsec``: the dynamic-security plugin's whole state (services, vehicles, roles).

The salt is derived from the user and the gateway rather than drawn at random, so rendering
the logins twice gives the same bytes and a second run of the playbook changes nothing. It is
still unique per user and gateway, and it never depends on the password.

The roles are those ``fleetsentry infra up`` writes (shared/infra/mosquitto.py): keep the two
in step.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any


def mosquitto_pbkdf2(password: str, user: str, host: str, iterations: int = 101) -> str:
    salt = hashlib.sha256(f"fleetsentry-mosquitto:{host}:{user}".encode()).digest()[:12]
    digest = hashlib.pbkdf2_hmac("sha512", str(password).encode(), salt, int(iterations))
    return f"$7${int(iterations)}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _login(user: str, hashed: str, role: str, clientid: str | None = None) -> dict[str, Any]:
    _, _, iterations, salt, digest = hashed.split("$")
    out: dict[str, Any] = {"username": user, "password": digest, "salt": salt,
                           "iterations": int(iterations), "roles": [{"rolename": role}]}
    if clientid is not None:
        out["clientid"] = clientid
    return out


_SUFFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")


def mosquitto_dynsec(services: dict[str, str], admin_user: str, bridge_user: str,
                     vehicles: list[dict[str, str]], host: str,
                     iterations: int = 101, stream_topics: list[str] | None = None
                     ) -> dict[str, Any]:
    """``services``: user -> password of the admin and bridge accounts. Each vehicle logs in
    with its VIN (or a declared stream's device id), only with it as client id, and may
    publish fleet/<VIN>/telemetry, payments, status and each of ``stream_topics`` (the
    declared streams' topic suffixes), and subscribe to fleet/<VIN>/commands; everything not
    granted is denied."""
    for topic in stream_topics or ():
        if not _SUFFIX.fullmatch(topic):
            raise ValueError(f"mosquitto_stream_topics: {topic!r} is not a stream topic "
                             "suffix (^[a-z][a-z0-9_]{0,31}$)")
    suffixes = sorted({"telemetry", "payments", *(stream_topics or ())})
    roles = [
        {"rolename": admin_user, "acls": [
            _acl("publishClientSend", "#"), _acl("publishClientReceive", "#"),
            _acl("subscribePattern", "#"),
            _acl("publishClientSend", "$CONTROL/dynamic-security/v1"),
            _acl("publishClientReceive", "$CONTROL/dynamic-security/v1/response")]},
        {"rolename": bridge_user, "acls": [
            _acl("subscribePattern", "fleet/#"), _acl("subscribePattern", "$share/+/fleet/#"),
            _acl("publishClientReceive", "fleet/#"),
            _acl("publishClientSend", "fleet/+/commands")]},
    ]
    clients = [_login(user, mosquitto_pbkdf2(pw, user, host, iterations), user)
               for user, pw in sorted(services.items())]
    for vehicle in sorted(vehicles, key=lambda v: v["vin"]):
        vin = vehicle["vin"]
        hashed = vehicle.get("password_hash") or mosquitto_pbkdf2(vehicle["password"], vin,
                                                                  host, iterations)
        clients.append(_login(vin, hashed, f"vehicle-{vin}", clientid=vin))
        base = f"fleet/{vin}"
        roles.append({"rolename": f"vehicle-{vin}", "acls": [
            *(_acl("publishClientSend", f"{base}/{suffix}") for suffix in suffixes),
            _acl("publishClientSend", f"{base}/status"),
            _acl("subscribeLiteral", f"{base}/commands"),
            _acl("publishClientReceive", f"{base}/commands")]})
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                                 "subscribe": False, "unsubscribe": True},
            "clients": clients, "groups": [], "roles": roles}


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"mosquitto_pbkdf2": mosquitto_pbkdf2, "mosquitto_dynsec": mosquitto_dynsec}
