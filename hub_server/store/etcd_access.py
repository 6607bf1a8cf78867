"""How the hub proves itself to an etcd that asks: TLS (the CA that signs the
members' certificates, a client certificate) and etcd's user authentication.

etcd's authentication hands out a token that every call then carries in its
``token`` metadata. A token stops being accepted: a JWT token when its TTL
runs out (etcd does not extend it), a simple token when the member that issued
it restarts (it lives in that member's memory) or after 5 idle minutes. The
hub then authenticates again and repeats the call once, as etcd's Go client
does for the same three errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aetcd import rpc

log = logging.getLogger(__name__)

# etcd tells these apart by message only (its Go client's rpctypes matches the
# same strings): a token it no longer accepts, none at all, or one issued before
# a change of users or roles.
_STALE_TOKEN = (
    "etcdserver: invalid auth token",
    "etcdserver: user name is empty",
    "etcdserver: revision of auth store is old",
)


class EtcdRefused(ValueError):
    """etcd refused the hub's user or certificate: a setting to fix, not an
    outage to wait out."""


@dataclass(frozen=True)
class EtcdAccess:
    """TLS material (PEM bytes) and an etcd user for one etcd cluster."""

    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    # The name checked against the members' certificates (the first endpoint's
    # host: the channel reaches the members by address).
    server_name: str = ""

    @classmethod
    def from_files(
        cls,
        endpoints: list[str],
        *,
        cacert: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        user: str = "",
        password: str = "",
    ) -> EtcdAccess:
        tls = (
            cacert is not None
            or cert is not None
            or any(e.strip().startswith("https://") for e in endpoints)
        )
        first = endpoints[0].strip().removeprefix("https://").removeprefix("http://")
        return cls(
            tls=tls,
            ca=cacert.read_bytes() if cacert else None,
            cert=cert.read_bytes() if cert else None,
            key=key.read_bytes() if key else None,
            user=user,
            password=password,
            server_name=first.rpartition(":")[0].strip("[]"),
        )

    def channel(self, target: str, options: Sequence[tuple[str, object]]) -> grpc.aio.Channel:
        if not self.tls:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        if self.server_name:
            options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.aio.secure_channel(target, credentials, options=options)


def handshake_refusal(e: grpc.aio.AioRpcError) -> str | None:
    """What a failed TLS handshake means for the settings, None for any other
    error (etcd down or still starting is waited out)."""
    details = e.details() or ""
    if "handshake failed" not in details.lower():
        return None
    reason = details.rpartition("OPENSSL_internal:")[2].removesuffix(": OK").strip()
    if "CERTIFICATE_VERIFY_FAILED" in details:
        hint = "etcd's certificate is not signed by etcd_cacert, or does not name the endpoint"
    elif "ALERT" in details:
        hint = "etcd refused the hub's client certificate: check etcd_cert and etcd_key"
    else:
        hint = "check etcd_cacert, etcd_cert and etcd_key"
    return f"TLS handshake with etcd failed ({reason}): {hint}"


def is_stale_token(e: grpc.aio.AioRpcError) -> bool:
    return (e.details() or "").strip() in _STALE_TOKEN


class AuthToken:
    """The current token of one etcd user; renewed by one caller at a time."""

    def __init__(self, stub: rpc.AuthStub, user: str, password: str, timeout: float) -> None:
        self._stub = stub
        self.user = user
        self._password = password
        self._timeout = timeout
        self._token = ""
        self.generation = 0  # bumped by every renewal
        self._lock = asyncio.Lock()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("token", self._token),) if self._token else ()

    async def renew(self, seen: int | None = None) -> None:
        """Authenticates again, unless another caller already did since the
        token of generation ``seen`` was refused."""
        async with self._lock:
            if seen is not None and seen != self.generation:
                return
            request = rpc.AuthenticateRequest(name=self.user, password=self._password)
            try:
                resp = await self._stub.Authenticate(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as e:
                refused = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
                if e.code() in refused:
                    # A wrong user or password; auth not enabled on the server.
                    raise EtcdRefused(
                        f"etcd refused user {self.user!r}: "
                        f"{(e.details() or '').removeprefix('etcdserver: ')}"
                    ) from e
                raise  # unreachable: the caller's to report
            self._token = resp.token
            self.generation += 1
            log.debug("authenticated to etcd as %r", self.user)
