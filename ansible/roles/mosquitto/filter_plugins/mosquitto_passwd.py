"""``mosquitto_pbkdf2``: a password-file entry in mosquitto's ``$7$`` (PBKDF2-SHA512) format.

The salt is derived from the user and the gateway rather than drawn at random, so rendering
the password file twice gives the same bytes and a second run of the playbook changes
nothing. It is still unique per user and gateway, and it never depends on the password.
"""

from __future__ import annotations

import base64
import hashlib


def mosquitto_pbkdf2(password: str, user: str, host: str, iterations: int = 101) -> str:
    salt = hashlib.sha256(f"fleetsentry-mosquitto:{host}:{user}".encode()).digest()[:12]
    digest = hashlib.pbkdf2_hmac("sha512", str(password).encode(), salt, int(iterations))
    return f"$7${int(iterations)}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"mosquitto_pbkdf2": mosquitto_pbkdf2}
