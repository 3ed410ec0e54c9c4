"""Keyed tokens for personal data: HMAC-SHA256 under the fleet secret.

The same value gets the same token on every gateway that shares the fleet secret, so a card
seen at two depots is one card in the cloud, yet nobody without the secret can go from a token
back to the value (the edge vault keeps the values themselves).

>>> t = Tokenizer(b"a fleet secret of 16+ bytes")
>>> t.token("vin", "1HGCM82633A004352") == t.token("vin", "1HGCM82633A004352")
True
>>> len(t.token("vin", "1HGCM82633A004352"))
32
>>> t.token("vin", "X") != t.token("card", "X")
True
"""

from __future__ import annotations

import hashlib
import hmac

from shared.errors import ConfigError

TOKEN_CHARS = 32  # hex characters: 128 bits of the HMAC, ample against collisions in a fleet
MIN_SECRET_BYTES = 16
_CACHE_LIMIT = 65_536


class Tokenizer:
    """Turns (kind, value) into a stable keyed token. Cheap to call: recent values are cached."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"the fleet secret must be at least {MIN_SECRET_BYTES} bytes", setting="secret"
            )
        self._secret = secret
        self._cache: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return "Tokenizer(secret='********')"

    def token(self, kind: str, value: str) -> str:
        """The token of ``value`` in namespace ``kind`` (e.g. "vin", "driver", "card")."""
        key = (kind, value)
        tok = self._cache.get(key)
        if tok is None:
            # kind and value are joined with a separator that cannot occur in kind, so
            # ("a", "b:c") and ("a:b", "c") never share a token.
            msg = f"{kind}\x00{value}".encode()
            tok = hmac.digest(self._secret, msg, hashlib.sha256).hex()[:TOKEN_CHARS]
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = tok
        return tok
