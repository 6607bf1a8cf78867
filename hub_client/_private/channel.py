"""The connection to a hub: plaintext or TLS (optionally with a client
certificate), and a bearer token sent on every call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hub_client._private.targets import channel_target

# The environment variable a token is read from when none is given
# (like CONSUL_HTTP_TOKEN), so services and hubctl need no code for it.
TOKEN_ENV = "HUB_TOKEN"


def _read(value: str | Path | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS settings: ``TLS(ca="ca.pem")`` to check the hub's certificate;
    add ``cert`` and ``key`` when the hub requires client certificates.
    Values are PEM file paths or the PEM bytes themselves; with no ``ca``, the
    system's roots are used."""

    ca: str | Path | bytes | None = None
    cert: str | Path | bytes | None = None
    key: str | Path | bytes | None = None
    # The name the hub's certificate must carry when it differs from the host
    # dialled (e.g. dialling an IP address).
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )


def _with_token(details: Any, header: tuple[str, str]) -> Any:
    metadata = list(details.metadata or ())
    metadata.append(header)
    return details._replace(metadata=metadata)


class _Token:
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")


# grpc.aio files each interceptor under the first call kind it implements, so
# each kind needs an object of its own.
class _UnaryUnaryToken(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_token(details, self._header), request)


class _UnaryStreamToken(_Token, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_token(details, self._header), request)


class _StreamUnaryToken(_Token, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_with_token(details, self._header), request_iterator)


def _bearer_token(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Adds ``authorization: Bearer <token>`` to every call. (gRPC's own call
    credentials need TLS; a token over plaintext loopback is legitimate too.)"""
    return [_UnaryUnaryToken(token), _UnaryStreamToken(token), _StreamUnaryToken(token)]


def open_channel(
    target: str | Sequence[str],
    *,
    token: str | None,
    tls: TLS | None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to the hub, or to whichever of several hubs answers (see
    targets.py). ``token=None`` reads $HUB_TOKEN; "" sends none."""
    target = channel_target(target)
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    interceptors = _bearer_token(token) if token else None
    opts = list(options)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=opts, interceptors=interceptors
    )
