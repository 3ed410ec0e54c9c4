"""Build dead letters that hold no personal data in the clear, and open them on the gateway.

A rejected message still has to be inspectable (why did this vehicle's payment bounce?), but
``dlq.ingest`` is a plain Kafka topic: whoever reads it must not learn a VIN, a driver, a card
or a name. So a dead letter carries

- the payload sealed with AES-256-GCM under a key derived (HKDF) from the vault's master key:
  only this gateway opens it. Each process derives its own key from a random salt stored in
  the letter, so random nonces never come near their collision bound under one key;
- its length and a keyed digest (HMAC-SHA256 under another key derived from the master key);
- the source with the VIN replaced by the vehicle token the anonymized records use (so an
  operator can match it, and ``fleetsentry edge vault reveal`` it, audited);
- a detail scrubbed of quoted values, VIN-like words and card-like digit runs.

>>> scrub("Invalid enum value 'Ada Example' (at category)")
'Invalid enum value <redacted> (at category)'
>>> scrub("payload vin 1HGCM82633A004352, card 4111 1111 1111 1111")
'payload vin <redacted>, card <redacted>'
>>> scrub("Expected `str` matching regex '^[0-9]{12,19}$' (at card_number)")
"Expected `str` matching regex '^[0-9]{12,19}$' (at card_number)"
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.config import EdgeConfig
from edge.dlq.errors import DeadLetterError
from shared import contracts, streams
from shared.tokens import Tokenizer

REDACTED = "<redacted>"
MAX_DETAIL = 1000
MAX_SOURCE = 256
FORMAT = 1
SALT = 16
NONCE = 12
_SEAL_INFO = b"fleetsentry dlq.ingest seal v1"
_DIGEST_INFO = b"fleetsentry dlq.ingest digest v1"
VIN_KIND = "vin"  # the anonymizer's namespace: a letter's token is the vehicle_token of anon.*

# A quoted value (Python repr, as msgspec and our own messages quote them) -- also one cut
# off by truncation -- except the regex msgspec quotes from the contract, which is no value.
_QUOTED = re.compile(
    r"""(regex )?(?<!\w)(?:'(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$))""", re.DOTALL
)
_VIN_LIKE = re.compile(r"(?<![A-Za-z0-9])[A-HJ-NPR-Za-hj-npr-z0-9]{17}(?![A-Za-z0-9])")
# Twelve digits or more, single spaces or dashes between them: a card number however written.
_DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){11,}(?!\d)")


def scrub(detail: str) -> str:
    """``detail`` without the values it quotes and without anything shaped like a VIN or card."""
    text = _QUOTED.sub(_unquote, detail[: 2 * MAX_DETAIL])
    text = _VIN_LIKE.sub(REDACTED, text)
    return _DIGIT_RUN.sub(REDACTED, text)[:MAX_DETAIL]


def _unquote(match: re.Match[str]) -> str:
    return match.group(0) if match.group(1) else REDACTED


def _derive(master: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(master)


class DeadLetters:
    """Seals dead letters (every producer of ``dlq.ingest`` uses it) and opens them again.

    Constructing it does no I/O: ``load()`` reads the key files.
    """

    def __init__(self, master_key: bytes, tokenizer: Tokenizer) -> None:
        self._master = master_key
        self._tokens = tokenizer
        self._digest_key = _derive(master_key, None, _DIGEST_INFO)
        self._salt = os.urandom(SALT)
        self._aead = AESGCM(_derive(master_key, self._salt, _SEAL_INFO))
        self._opened: dict[bytes, AESGCM] = {self._salt: self._aead}
        self._suffixes = frozenset(s.mqtt_suffix for s in streams.all_streams())

    def __repr__(self) -> str:
        return "DeadLetters(master_key='********')"

    @classmethod
    def load(cls, config: EdgeConfig, create: bool = True) -> DeadLetters:
        """Keyed by the vault's master key and the fleet secret, the files the vault uses
        (created 0600 when missing and ``create``, as the vault creates them: whichever
        service starts first makes them, the others read them)."""
        from edge.vault.keyfile import load_or_create
        from edge.vault.setup import key_file, secret_file

        master = load_or_create(key_file(config), create=create)
        return cls(master, Tokenizer(load_or_create(secret_file(config), create=create)))

    # --- building -------------------------------------------------------------------------

    def digest(self, payload: bytes) -> str:
        return hmac.digest(self._digest_key, payload, hashlib.sha256).hex()

    def letter(
        self,
        source: str,
        reason: str,
        detail: str,
        received_ts: float,
        payload: bytes,
        count: int = 1,
    ) -> bytes:
        """One encoded dead letter. ``source`` must already hold no personal data."""
        source = source[:MAX_SOURCE]
        nonce = os.urandom(NONCE)
        sealed = self._aead.encrypt(nonce, payload, _aad(source, reason))
        return contracts.encode(
            contracts.DeadLetter(
                source=source,
                reason=reason,
                detail=scrub(detail),
                received_ts=received_ts,
                length=len(payload),
                digest=self.digest(payload),
                sealed=bytes([FORMAT]) + self._salt + nonce + sealed,
                count=count,
            )
        )

    def vehicle_token(self, vin: str) -> str:
        """The vehicle's keyed token: the ``vehicle_token`` its anonymized records carry."""
        return self._tokens.token(VIN_KIND, vin)

    def mqtt_source(self, topic: bytes) -> tuple[str, bytes]:
        """(source, Kafka key) for a message on ``topic``: the VIN becomes its token."""
        parts = topic.split(b"/")
        if len(parts) == 3 and parts[0] == b"fleet":
            vehicle = self.vehicle_token(parts[1].decode("utf-8", "replace"))
            suffix = parts[2].decode("utf-8", "replace")
            suffix = suffix if suffix in self._suffixes else "other"
            return f"mqtt:fleet/{vehicle}/{suffix}", vehicle.encode()
        # Not fleet/<vin>/<stream>: the whole topic may name someone.
        token = self._tokens.token("topic", topic.decode("utf-8", "replace"))
        return f"mqtt:topic/{token}", token.encode()

    def from_mqtt(
        self,
        topic: bytes,
        reason: str,
        detail: str,
        received_ts: float,
        payload: bytes,
        count: int = 1,
    ) -> tuple[bytes, bytes]:
        """(key, value) of the dead letter of one MQTT message (or of ``count`` of them, the
        payload being the first one's)."""
        source, key = self.mqtt_source(topic)
        return key, self.letter(source, reason, detail, received_ts, payload, count)

    # --- opening --------------------------------------------------------------------------

    def open(self, letter: contracts.DeadLetter) -> bytes:
        """The payload of ``letter``, checked against its digest."""
        sealed = letter.sealed
        head = 1 + SALT + NONCE
        if len(sealed) < head + 16 or sealed[0] != FORMAT:
            raise DeadLetterError("the sealed payload is not in a format this build reads")
        salt, nonce = sealed[1 : 1 + SALT], sealed[1 + SALT : head]
        aead = self._opened.get(salt)
        if aead is None:
            aead = self._opened[salt] = AESGCM(_derive(self._master, salt, _SEAL_INFO))
        try:
            payload = aead.decrypt(nonce, sealed[head:], _aad(letter.source, letter.reason))
        except InvalidTag:
            raise DeadLetterError(
                "cannot open the sealed payload: it was sealed under another master key "
                "(another gateway, or vault.key was replaced) or the record was altered"
            ) from None
        if not hmac.compare_digest(self.digest(payload), letter.digest):
            raise DeadLetterError("the payload does not match the letter's digest")
        return payload


def _aad(source: str, reason: str) -> bytes:
    # Binds the ciphertext to its letter: a payload moved under another source fails to open.
    return f"{source}\x00{reason}".encode()
