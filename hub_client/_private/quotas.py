"""``HubClient.allocation``: a quota allocation held for the length of a block."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING

from hub_client._private.errors import HubError
from hub_client._private.models import ResourceUsage

if TYPE_CHECKING:
    from hub_client._private.client import HubClient

log = logging.getLogger(__name__)

# Rates count what was done: a call made within the hour is not given back.
RATE_RESOURCES = frozenset({"api_calls_per_hour"})


class Allocation:
    """Allocates on entry, releases on exit (also on error or cancellation)::

        async with hub.allocation("websocket_connections") as usage:
            ...  # usage.used includes this allocation

    Entry raises ``QuotaExceeded`` when the amount does not fit. For
    ``api_calls_per_hour`` nothing is released on exit: calls made stay counted
    in their hour.
    """

    def __init__(self, client: HubClient, resource: str, amount: int, tenant: str | None) -> None:
        self._client = client
        self.resource = resource
        self.amount = amount
        self.tenant = tenant
        self.usage: ResourceUsage | None = None

    async def __aenter__(self) -> ResourceUsage:
        self.usage = await self._client.allocate(self.resource, self.amount, tenant=self.tenant)
        return self.usage

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.usage is None or self.resource in RATE_RESOURCES:
            return
        self.usage = None
        # Shielded: a cancelled block still gives its allocation back.
        release = asyncio.ensure_future(
            self._client.release(self.resource, self.amount, tenant=self.tenant)
        )
        try:
            await asyncio.shield(release)
        except HubError as e:
            if exc is None:
                raise
            log.warning("releasing %d %s failed: %s", self.amount, self.resource, e)
