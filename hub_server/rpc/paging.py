"""Opaque page tokens: ``<kind>:<position>`` in URL-safe base64. Every listing
RPC uses these two functions, so a token from one listing is refused by another."""

from __future__ import annotations

import base64

from hub_server.kernel.errors import InvalidArgument


def encode_page_token(kind: str, position: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode()


def decode_page_token(kind: str, token: str) -> str:
    """The position in a token of this kind; "" for no token (the first page).
    Anything else is INVALID_ARGUMENT on ``page_token``."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except Exception as e:
        raise InvalidArgument.single("page_token", "is not a token this hub issued") from e
    if not raw.startswith(f"{kind}:"):
        raise InvalidArgument.single("page_token", "is not a token this hub issued")
    return raw[len(kind) + 1 :]
