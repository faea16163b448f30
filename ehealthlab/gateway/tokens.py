"""Random secrets and identifiers the gateway hands out, and how API tokens are kept.

Pure functions, no I/O. API tokens carry 256 bits of entropy, so they are stored as a plain
SHA-256 hash (a slow hash adds nothing against guessing) and looked up by that hash; the
`ehl_` prefix lets secret scanners and people recognise a leaked one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_PREFIX = "ehl_"  # noqa: S105 (a public prefix, not a secret)
#: secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet
_TOKEN_BODY_LENGTH = 43
_TOKEN = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]{{{_TOKEN_BODY_LENGTH}}}")

#: short, readable prefixes of generated device ids; other types use their initials
_DEVICE_ID_PREFIXES = {
    "blood_pressure_monitor": "bpm",
    "pulse_oximeter": "oxi",
    "weighing_scale": "scale",
    "thermometer": "temp",
    "glucometer": "gluco",
    "activity_tracker": "act",
    "multiparameter_monitor": "multi",
}


def new_token() -> str:
    """A fresh API token: `ehl_` and 256 random bits, shown once to whoever asked for it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def looks_like_token(candidate: str) -> bool:
    """True when `candidate` has a token's shape; anything else is refused without a lookup."""
    return _TOKEN.fullmatch(candidate) is not None


def hash_token(token: str) -> bytes:
    """What the database keeps of a token (SHA-256 of its UTF-8 text)."""
    return hashlib.sha256(token.encode()).digest()


def token_matches(token: str, stored_hash: bytes) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    return hmac.compare_digest(hash_token(token), stored_hash)


def new_device_password() -> str:
    """A device's MQTT password (192 random bits), shown once; the broker keeps a hash."""
    return secrets.token_urlsafe(24)


def new_device_id(device_type: str) -> str:
    """A contract-valid device id: a type prefix and 64 random bits, nothing about a person."""
    prefix = _DEVICE_ID_PREFIXES.get(device_type) or "".join(
        word[0] for word in device_type.split("_") if word
    )
    prefix = re.sub(r"[^a-z0-9]", "", prefix.lower()) or "dev"
    return f"{prefix}-{secrets.token_hex(8)}"
