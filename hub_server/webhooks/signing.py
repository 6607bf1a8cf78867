"""Signing: ``HMAC-SHA256(secret, timestamp + "." + body)`` in hex.

A receiver recomputes it over the raw body and the timestamp header and
compares in constant time; while a rotated-out secret is still valid the
signature header carries one signature per valid secret, comma-separated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets

SIGNATURE_HEADER = "X-Hub-Signature-256"
TIMESTAMP_HEADER = "X-Hub-Timestamp"
EVENT_ID_HEADER = "X-Hub-Event-Id"
EVENT_TYPE_HEADER = "X-Hub-Event-Type"
PREFIX = "sha256="


def new_secret() -> str:
    """A fresh secret: 32 random bytes, url-safe text."""
    return "whsec_" + _secrets.token_urlsafe(32)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secrets: list[str], timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` for each valid secret, the newest first."""
    return ", ".join(PREFIX + sign(s, timestamp, body) for s in secrets)


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """True when one of the header's signatures is ``secret``'s (what a receiver does)."""
    expected = sign(secret, timestamp, body)
    return any(
        hmac.compare_digest(part.strip().removeprefix(PREFIX), expected)
        for part in header.split(",")
    )
