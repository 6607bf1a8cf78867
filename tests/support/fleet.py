"""A service's fleet for roll-out tests: real gRPC instances registered with the
hub, and a controller that follows the service's directives like an orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

from hub_client import Directive, HubClient, Registration, health_check
from tests.support.servers import GrpcServer
from tests.support.waiting import eventually

FAST = dict(interval=0.2, timeout=0.5)


class Fleet:
    """A service's instances: real gRPC servers registered with the hub, and a
    controller that follows the service's directives like an orchestrator."""

    def __init__(self, client: HubClient, service: str) -> None:
        self.client = client
        self.service = service
        self.servers: dict[str, GrpcServer] = {}
        self.regs: dict[str, Registration] = {}
        self.versions: dict[str, str] = {}
        self.directives: list[Directive] = []
        self.events: list[tuple[float, str, str]] = []  # (time, action, instance)
        self.replace = True  # start a replacement on UPGRADE
        self.replacement_serving = True
        self.before_replace: Callable[[Directive], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._n = 0
        self.removed_at: dict[str, float] = {}

    async def add(self, version: str, instance_id: str = "", *, serving: bool = True) -> str:
        self._n += 1
        instance_id = instance_id or f"{self.service}-{version}-{self._n:03d}"
        srv = GrpcServer()
        await srv.start()
        if not serving:
            await srv.set_serving(False)
        reg = await self.client.register(
            self.service, instance_id=instance_id, host="127.0.0.1", port=srv.port,
            protocol="grpc", version=version, health=health_check(grpc_service="", **FAST),
        )  # fmt: skip
        self.servers[instance_id], self.regs[instance_id] = srv, reg
        self.versions[instance_id] = version
        return instance_id

    async def remove(self, instance_id: str) -> None:
        reg, srv = self.regs.pop(instance_id, None), self.servers.pop(instance_id, None)
        self.versions.pop(instance_id, None)
        if reg is not None:
            await reg.deregister()
        if srv is not None:
            await srv.stop()
        self.removed_at[instance_id] = time.time()

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for d in self.client.watch_directives(self.service):
            self.directives.append(d)
            self.events.append((time.time(), d.action, d.instance_id))
            if d.action == "UPGRADE" and d.instance_id in self.regs and self.replace:
                self._spawn(self._replace(d))
            elif d.action == "RETIRE":
                self._spawn(self.remove(d.instance_id))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _replace(self, d: Directive) -> None:
        if self.before_replace is not None:
            await self.before_replace(d)
        await self.add(d.target_version, serving=self.replacement_serving)

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for iid in list(self.regs):
            with contextlib.suppress(Exception):
                await self.remove(iid)

    def count(self, action: str) -> Counter[str]:
        return Counter(d.instance_id for d in self.directives if d.action == action)


@contextlib.asynccontextmanager
async def fleet(
    client: HubClient, service: str, n: int, version: str = "1.0.0"
) -> AsyncIterator[Fleet]:
    """``n`` instances of ``version``, followed, once the hub sees them all healthy."""
    f = Fleet(client, service)
    try:
        for k in range(n):
            await f.add(version, f"{service}-old-{k:02d}")
        f.start()
        await eventually(lambda: all_healthy(client, service, n), timeout=30)
        yield f
    finally:
        await f.stop()


async def all_healthy(client: HubClient, service: str, n: int) -> bool:
    health = await client.get_health(service)
    return sum(h.status == "healthy" for h in health) >= n


async def deployment_is(client: HubClient, deployment_id: str, state: str) -> bool:
    return (await client.deployment(deployment_id)).state == state
