"""Hubs in tests: the type of the ``hub_factory`` fixture, and stopping a hub
the way a killed process stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from hub_server.app import Hub

HubFactory = Callable[..., Awaitable[Hub]]


async def crash(hub: Hub) -> None:
    """Stops a hub the way a killed process stops: no lease revoked, nothing handed
    over. Stopping its server or mirrors sometimes takes a while; after 5 s this
    returns, the hub being dead for the others either way."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_kill(hub), 5)


async def _kill(hub: Hub) -> None:
    assert hub.services.election._task is not None and hub.server is not None
    assert hub.presence is not None and hub.presence._task is not None
    hub.services.election._task.cancel()
    await hub.services.election._step_down()
    hub.presence._task.cancel()
    await hub.server.stop(0)
    for mirror in hub.services.mirrors:
        await mirror.stop()
    for task in hub._tasks:
        task.cancel()
    hub.services.election._lease = 0  # nothing left for stop() to revoke
    hub.presence._lease = 0
