"""A key that exists while its owner lives: written under a lease the owner keeps
alive, written again under a new lease if the old one is lost (etcd restored from
a backup, or unreachable for longer than the TTL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hub_server.kernel.errors import StoreUnavailable
from hub_server.store.etcd import EtcdStore

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, store: EtcdStore, key: bytes, value: bytes, *, ttl: int = 10) -> None:
        self._store = store
        self.key = key
        self.value = value
        self.ttl = ttl
        self._lease = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._announce()
        self._task = asyncio.create_task(self._keep())

    async def _announce(self) -> None:
        self._lease = await self._store.grant_lease(self.ttl)
        await self._store.put(self.key, self.value, lease=self._lease)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if await self._store.keep_alive(self._lease) <= 0:
                    await self._announce()
            except StoreUnavailable as e:
                log.debug("presence of %r: %s", self.key, e)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._store.revoke_lease(self._lease)
