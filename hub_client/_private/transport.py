"""What every capability of the client calls through: one channel to the hub
(channel.py: targets, TLS, token), its stubs, the tenant headers, and the three
ways a call is made (unary, unary retried on Unavailable, a stream opened).

Capability modules take a Transport, never the HubClient facade, so none of
them imports client.py; watch streams reopen through resume.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from aitrading.hub.v1 import (
    backup_pb2_grpc,
    balancer_pb2_grpc,
    circuit_pb2_grpc,
    cluster_pb2_grpc,
    config_pb2_grpc,
    deployment_pb2_grpc,
    health_pb2_grpc,
    registry_pb2_grpc,
    tenant_pb2_grpc,
)

from hub_client._private.channel import TLS, open_channel
from hub_client._private.errors import (
    FieldViolation,
    InvalidArgument,
    Unavailable,
    from_rpc_error,
)
from hub_client._private.tiers import Tier, parse_tier

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

# Calls that carry a request id are retried on Unavailable (UNAVAILABLE,
# CANCELLED from a replica stopping, ...) while the client's timeout lasts.
_RETRY_ATTEMPTS = 8
_RETRY_FIRST_DELAY = 0.05
_RETRY_MAX_DELAY = 1.0


@dataclass(frozen=True)
class TenantContext:
    """Sent as metadata on every call (x-tenant-id, x-user-id, ...)."""

    tenant_id: str = ""
    user_id: str = ""
    subscription_tier: str = ""
    correlation_id: str = ""

    def __post_init__(self) -> None:
        # A typo ("gold") would silently count as free at the hub: refuse it here.
        if self.subscription_tier and parse_tier(self.subscription_tier) is None:
            tiers = [t.value for t in Tier]
            desc = f"unknown subscription_tier {self.subscription_tier!r}; one of {tiers}"
            raise InvalidArgument(
                f"subscription_tier: {desc}",
                code=grpc.StatusCode.INVALID_ARGUMENT,
                field_violations=[FieldViolation("subscription_tier", desc)],
            )
        # A StrEnum member goes out as its plain value.
        object.__setattr__(self, "subscription_tier", str(self.subscription_tier))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = (
            ("x-tenant-id", self.tenant_id),
            ("x-user-id", self.user_id),
            ("x-subscription-tier", self.subscription_tier),
            ("x-correlation-id", self.correlation_id),
        )
        return tuple((k, v) for k, v in pairs if v)


class Transport:
    """A channel to the hub with its stubs and the tenant headers calls carry."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        target: str | Sequence[str],
        timeout: float,
        context: TenantContext,
        owns_channel: bool,
    ) -> None:
        self.channel = channel
        self.target = target
        self.timeout = timeout
        self.context = context
        self._owns_channel = owns_channel
        self.registry_stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self.health_stub = health_pb2_grpc.HealthServiceStub(channel)
        self.balancer_stub = balancer_pb2_grpc.LoadBalancerServiceStub(channel)
        self.circuit_stub = circuit_pb2_grpc.CircuitBreakerServiceStub(channel)
        self.cluster_stub = cluster_pb2_grpc.ClusterServiceStub(channel)
        self.config_stub = config_pb2_grpc.ConfigServiceStub(channel)
        self.tenant_stub = tenant_pb2_grpc.TenantServiceStub(channel)
        self.deployment_stub = deployment_pb2_grpc.DeploymentServiceStub(channel)
        self.backup_stub = backup_pb2_grpc.BackupServiceStub(channel)

    @classmethod
    def connect(
        cls,
        target: str | Sequence[str],
        *,
        timeout: float,
        context: TenantContext,
        token: str | None,
        tls: TLS | None,
    ) -> Transport:
        """A transport over a channel of its own (closed by ``close``)."""
        channel = open_channel(target, token=token, tls=tls, options=_CHANNEL_OPTIONS)
        return cls(channel, target=target, timeout=timeout, context=context, owns_channel=True)

    def with_context(self, **changes: str) -> Transport:
        """The same channel (not closed by the new transport) with other tenant headers."""
        return Transport(
            self.channel,
            target=self.target,
            timeout=self.timeout,
            context=replace(self.context, **changes),
            owns_channel=False,
        )

    def tenant(self, tenant: str | None) -> str:
        """``tenant``, or this client's tenant for None."""
        return self.context.tenant_id if tenant is None else tenant

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()

    async def call(self, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        """A unary call with the tenant headers, gRPC errors raised as ``HubError``s."""
        # wait_for_ready: ride over a hub restart (within the timeout) instead of
        # failing at once while the channel reconnects.
        try:
            return await method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self.context.metadata(),
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    async def call_retried(self, method: Any, request: Any) -> Any:
        """For a request the hub answers once however often it is sent (one with a
        request id): sent again on Unavailable, with backoff, until it is answered
        or the client's timeout (for all attempts together) runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = _RETRY_FIRST_DELAY
        for attempt in range(1, _RETRY_ATTEMPTS + 1):
            try:
                return await method(
                    request,
                    timeout=max(0.001, deadline - loop.time()),
                    metadata=self.context.metadata(),
                    wait_for_ready=True,
                )
            except grpc.aio.AioRpcError as e:
                error = from_rpc_error(e)
                pause = random.uniform(delay / 2, delay)
                if (
                    not isinstance(error, Unavailable)
                    or attempt == _RETRY_ATTEMPTS
                    or loop.time() + pause >= deadline
                ):
                    raise error from None
                log.debug("%s: %s; retrying (attempt %d)", method, error, attempt + 1)
            await asyncio.sleep(pause)
            delay = min(delay * 2, _RETRY_MAX_DELAY)
        raise AssertionError("unreachable")

    def open_stream(self, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        """A streaming call (a request message, or an iterator of them) with the
        tenant headers, waiting for a reconnecting channel. Its gRPC errors come
        while it is read: the caller maps them (``from_rpc_error``) or resumes
        (``resume_watch``)."""
        return method(
            request, timeout=timeout, metadata=self.context.metadata(), wait_for_ready=True
        )
