"""A registered instance that keeps its lease alive in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType

from aitrading.hub.v1 import registry_pb2

from hub_client._private.errors import HubError, NotFound
from hub_client._private.models import Instance
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)


class Registration:
    """The handle ``HubClient.register`` returns.

    Renews the lease every third of its TTL. If the hub says the instance or its
    lease is gone (etcd restarted, lease lapsed while the hub was unreachable),
    it registers again with the same instance id. ``deregister()`` (or leaving
    ``async with``) stops that and removes the instance.
    """

    def __init__(self, transport: Transport, request: registry_pb2.RegisterRequest) -> None:
        self._transport = transport
        self._request = request
        self._task: asyncio.Task[None] | None = None
        self.instance: Instance | None = None
        self.on_close: Callable[[Registration], None] | None = None
        # Called with (service, instance id) once the hub has removed it.
        self.on_deregistered: Callable[[str, str], None] | None = None
        # Counts of what the keep-alive loop did, for callers and tests.
        self.renewals = 0
        self.reregistrations = 0

    @property
    def instance_id(self) -> str:
        assert self.instance is not None
        return self.instance.instance_id

    async def start(self, *, keep_alive: bool = True, timeout: float | None = None) -> None:
        await self._register(timeout)
        if keep_alive:
            self._task = asyncio.create_task(self._keep_alive_loop())

    async def _register(self, timeout: float | None = None) -> None:
        resp = await self._transport.call(
            self._transport.registry_stub.Register, self._request, timeout=timeout
        )
        self.instance = Instance.from_pb(resp.instance)
        # Later registrations must update this instance, not make a new one.
        self._request.instance_id = self.instance.instance_id

    async def _keep_alive_loop(self) -> None:
        assert self.instance is not None
        interval = max(self.instance.ttl_seconds / 3, 0.5)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.keep_alive()
                delay = interval
            except NotFound:
                try:
                    await self._register()
                    self.reregistrations += 1
                    delay = max(self.instance.ttl_seconds / 3, 0.5)
                except HubError as e:
                    log.warning("re-registering %s failed: %s", self._request.service, e)
                    delay = min(1.0, interval)
            except HubError as e:
                # The hub or etcd is unreachable: retry soon, the lease may still live.
                log.warning("keep-alive for %s failed: %s", self._request.service, e)
                delay = min(1.0, interval)

    async def keep_alive(self, *, timeout: float | None = None) -> int:
        """Renews the lease once; returns the TTL. Raises InstanceNotFound if gone."""
        assert self.instance is not None
        resp = await self._transport.call(
            self._transport.registry_stub.KeepAlive,
            registry_pb2.KeepAliveRequest(
                service=self.instance.service,
                instance_id=self.instance.instance_id,
                lease_id=self.instance.lease_id,
            ),
            timeout=timeout,
        )
        self.renewals += 1
        return int(resp.ttl_seconds)

    async def deregister(self, *, timeout: float | None = None) -> None:
        """Stops the keep-alive and removes the instance (already gone is fine)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.on_close is not None:
            self.on_close(self)
            self.on_close = None
        if self.instance is None:
            return
        with contextlib.suppress(NotFound):
            await self._transport.call(
                self._transport.registry_stub.Deregister,
                registry_pb2.DeregisterRequest(
                    service=self.instance.service, instance_id=self.instance.instance_id
                ),
                timeout=timeout,
            )
        if self.on_deregistered is not None:
            self.on_deregistered(self.instance.service, self.instance.instance_id)

    async def __aenter__(self) -> Registration:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.deregister()
