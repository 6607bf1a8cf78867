"""What every capability of the client calls through: one channel to the hub
(channel.py: targets, TLS, token), its stubs, the tenant headers, and the three
ways a call is made (unary, unary retried on Unavailable, a stream opened), each
with the caller's deadline (``timeout=``, else the client's).

Capability modules take a Transport, never the HubClient facade, so none of
them imports client.py; watch streams reopen through resume.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import weakref
from collections.abc import Callable, Sequence
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

from hub_client._private.channel import TLS, TOKEN_ENV, open_channel
from hub_client._private.errors import (
    HubError,
    Unavailable,
    channel_closed,
    from_rpc_error,
    invalid_argument,
)
from hub_client._private.targets import channel_target
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
            raise invalid_argument(
                "subscription_tier",
                f"unknown subscription_tier {self.subscription_tier!r}; one of {tiers}",
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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Stubs:
    """The generated stubs over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.registry = registry_pb2_grpc.RegistryServiceStub(channel)
        self.health = health_pb2_grpc.HealthServiceStub(channel)
        self.balancer = balancer_pb2_grpc.LoadBalancerServiceStub(channel)
        self.circuit = circuit_pb2_grpc.CircuitBreakerServiceStub(channel)
        self.cluster = cluster_pb2_grpc.ClusterServiceStub(channel)
        self.config = config_pb2_grpc.ConfigServiceStub(channel)
        self.tenant = tenant_pb2_grpc.TenantServiceStub(channel)
        self.deployment = deployment_pb2_grpc.DeploymentServiceStub(channel)
        self.backup = backup_pb2_grpc.BackupServiceStub(channel)


class _Stream:
    """A streaming call as ``open_stream`` hands it out: its messages (``async
    for``), its answer (``await``, for a client stream) and ``cancel()``.

    It is the only holder of the grpc call between reads, so that closing the
    channel (``release``) can drop the call even while the watch reading it is
    suspended elsewhere; grpc stops its poller thread only once every channel
    and call is gone, which a fork needs (hub_client.sync). The next read of a
    released stream raises CancelledError, as grpc does for a call cancelled
    under its reader, and the watch resumes on a new channel.
    """

    def __init__(self, call: Any) -> None:
        self._call: Any = call

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Any:
        call = self._call
        if call is None:
            raise asyncio.CancelledError()
        message = await call.read()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message

    def __await__(self) -> Any:
        if self._call is None:
            raise asyncio.CancelledError()
        return self._call.__await__()

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def release(self) -> None:
        self.cancel()
        self._call = None


class _LoopChannel:
    """The channel and its stubs, opened in the event loop that uses them.

    grpc.aio binds a channel to the loop running when it is made, and a channel
    made outside any loop (a client built at import time, then used inside
    ``asyncio.run``) or in a loop that has ended fails in another one ("attached
    to a different loop"). So a channel of our own is opened on first use and
    opened anew when a different loop uses it; a caller's channel is used as is.
    """

    def __init__(
        self,
        opener: Callable[[], grpc.aio.Channel] | None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._opener = opener
        self._loop = _running_loop()
        self._stubs = _Stubs(channel) if channel is not None else None
        self.streams: weakref.WeakSet[_Stream] = weakref.WeakSet()

    def stubs(self) -> _Stubs:
        loop = _running_loop()
        if self._stubs is None or (
            self._opener is not None and loop is not None and loop is not self._loop
        ):
            assert self._opener is not None
            self._stubs = _Stubs(self._opener())
            self._loop = loop
        return self._stubs

    async def close(self) -> None:
        """Closes our channel (a caller's is theirs to close). One opened in
        another loop is only dropped: it cannot be closed from this one."""
        stubs, self._stubs = self._stubs, None
        if stubs is None or self._opener is None:
            return
        if self._loop is None or self._loop is _running_loop():
            await stubs.channel.close()
        for stream in list(self.streams):
            stream.release()


class Budget:
    """One deadline for every RPC a method makes (pages, retries): each gets
    what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.001, self.end - time.monotonic())

    def expired(self, pause: float = 0.0) -> bool:
        return time.monotonic() + pause >= self.end


def _typed(error: grpc.aio.AioRpcError | asyncio.CancelledError) -> HubError | None:
    """A failed call's typed error; None for a cancel of the caller's own task
    (which must propagate as it is)."""
    if isinstance(error, asyncio.CancelledError):
        return channel_closed()
    return from_rpc_error(error)


class Transport:
    """A channel to the hub with its stubs and the tenant headers calls carry."""

    def __init__(
        self,
        channel: grpc.aio.Channel | _LoopChannel,
        *,
        target: str | Sequence[str],
        timeout: float,
        context: TenantContext,
        owns_channel: bool,
    ) -> None:
        if not isinstance(channel, _LoopChannel):
            channel = _LoopChannel(None, channel)
        self._channel = channel
        self.target = target
        self.timeout = timeout
        self.context = context
        self._owns_channel = owns_channel

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
        """A transport over a channel of its own (closed by ``close``). The
        addresses and the token are read now (a bad address fails here); the
        channel opens on first use, in the loop that uses it."""
        resolved = channel_target(target)
        token = os.environ.get(TOKEN_ENV, "") if token is None else token

        def opener() -> grpc.aio.Channel:
            return open_channel(resolved, token=token, tls=tls, options=_CHANNEL_OPTIONS)

        return cls(
            _LoopChannel(opener), target=target, timeout=timeout, context=context, owns_channel=True
        )

    # The stubs of the channel of the running loop.

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel.stubs().channel

    @property
    def registry_stub(self) -> registry_pb2_grpc.RegistryServiceStub:
        return self._channel.stubs().registry

    @property
    def health_stub(self) -> health_pb2_grpc.HealthServiceStub:
        return self._channel.stubs().health

    @property
    def balancer_stub(self) -> balancer_pb2_grpc.LoadBalancerServiceStub:
        return self._channel.stubs().balancer

    @property
    def circuit_stub(self) -> circuit_pb2_grpc.CircuitBreakerServiceStub:
        return self._channel.stubs().circuit

    @property
    def cluster_stub(self) -> cluster_pb2_grpc.ClusterServiceStub:
        return self._channel.stubs().cluster

    @property
    def config_stub(self) -> config_pb2_grpc.ConfigServiceStub:
        return self._channel.stubs().config

    @property
    def tenant_stub(self) -> tenant_pb2_grpc.TenantServiceStub:
        return self._channel.stubs().tenant

    @property
    def deployment_stub(self) -> deployment_pb2_grpc.DeploymentServiceStub:
        return self._channel.stubs().deployment

    @property
    def backup_stub(self) -> backup_pb2_grpc.BackupServiceStub:
        return self._channel.stubs().backup

    def with_context(self, **changes: str) -> Transport:
        """The same channel (not closed by the new transport) with other tenant headers."""
        return Transport(
            self._channel,
            target=self.target,
            timeout=self.timeout,
            context=replace(self.context, **changes),
            owns_channel=False,
        )

    def budget(self, timeout: float | None) -> Budget:
        """The deadline of one method call: ``timeout``, else the client's."""
        return Budget(self.timeout if timeout is None else timeout)

    def tenant(self, tenant: str | None) -> str:
        """``tenant``, or this client's tenant for None."""
        return self.context.tenant_id if tenant is None else tenant

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def release_channel(self) -> None:
        """Closes the channel now, even one shared with ``with_context`` clones;
        the next call opens a new one (what hub_client.sync does before a fork)."""
        await self._channel.close()

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
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
            error = _typed(e)
            if error is None:
                raise
            raise error from None

    async def call_retried(self, method: Any, request: Any, *, timeout: float | None = None) -> Any:
        """For a request the hub answers once however often it is sent (one with a
        request id): sent again on Unavailable, with backoff, until it is answered
        or the timeout (``timeout``, else the client's; for all attempts
        together) runs out."""
        budget = self.budget(timeout)
        delay = _RETRY_FIRST_DELAY
        for attempt in range(1, _RETRY_ATTEMPTS + 1):
            try:
                return await method(
                    request,
                    timeout=budget.left(),
                    metadata=self.context.metadata(),
                    wait_for_ready=True,
                )
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
                error = _typed(e)
                if error is None:
                    raise
                pause = random.uniform(delay / 2, delay)
                if (
                    not isinstance(error, Unavailable)
                    or attempt == _RETRY_ATTEMPTS
                    or budget.expired(pause)
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
        call = method(
            request, timeout=timeout, metadata=self.context.metadata(), wait_for_ready=True
        )
        stream = _Stream(call)
        self._channel.streams.add(stream)
        return stream
