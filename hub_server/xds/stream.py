"""One ADS stream served: the client's requests read as they come, the hub's
changes noted as they happen, and one loop that answers whatever the protocol
says is due, from the shared resource cache.

Nothing is answered before the hub's view is current (``ResourceCache.ready``):
a hub that is still loading would otherwise answer with an empty catalogue, and
a client told that every service is gone drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from hub_server.xds.cache import ResourceCache
from hub_server.xds.clients import XdsClients, XdsClientStatus
from hub_server.xds.protocol import TYPES, NodeClaims, Received, StreamProtocol, node_claims

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose view a stream serves: the tenant, and the tier its reads are
    filtered by (None: unfiltered, as for GetService without tenant context)."""

    tenant_id: str
    tier: str | None


# Who the client is, given what its node says (the servicer decides how much of
# that it may believe).
Resolve = Callable[[NodeClaims], Viewer]

_NO_NODE = NodeClaims("", "", "")


class AdsStream:
    """Serves one StreamAggregatedResources call (``serve``)."""

    def __init__(
        self,
        cache: ResourceCache,
        clients: XdsClients,
        resolve: Resolve,
        *,
        peer: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cache = cache
        self._clients = clients
        self._resolve = resolve
        self._peer = peer
        self._clock = clock
        self.protocol = StreamProtocol()
        self.viewer: Viewer | None = None  # known once the first request is read
        self._wake = asyncio.Event()
        # Services the last answers came from: a change of another one concerns
        # this stream only through the catalogue, unless it holds a wildcard.
        self._services: dict[str, set[str]] = {}  # per type_url
        self._connected_at = clock()

    # -- what wakes the loop --------------------------------------------------

    def _changed(self, service: str | None) -> None:
        if (
            service is None
            or any(service in found for found in self._services.values())
            or self._has_wildcard()
        ):
            self.protocol.invalidate(self._clock())
            self._wake.set()

    def _has_wildcard(self) -> bool:
        return any((s := self.protocol.subscription(t)) is not None and s.wildcard for t in TYPES)

    def retier(self) -> None:
        """The client's tenant record changed: its tier is resolved again and,
        when it differs, everything is answered again for the new one."""
        if self.viewer is None:
            return
        viewer = self._resolve(self._claims())
        if viewer != self.viewer:
            log.info("xds stream of %s: tier %s -> %s", self._peer, self.viewer.tier, viewer.tier)
            self.viewer = viewer
            self.protocol.invalidate(self._clock())
            self._wake.set()

    def _claims(self) -> NodeClaims:
        node = self.protocol.node
        return node_claims(node) if node is not None else _NO_NODE

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        try:
            async for request in requests:
                received = self.protocol.receive(request, self._clock())
                if received is Received.NACK:
                    self._clients.nacked()
                    nack = self.protocol.last_nack
                    log.warning(
                        "xds client %s rejected %s version %s: %s",
                        self._claims().node_id or self._peer,
                        request.type_url,
                        nack.rejected_version if nack else "",
                        nack.error if nack else "",
                    )
                elif received is Received.UNKNOWN_TYPE:
                    log.debug("xds client %s asked for %.100s", self._peer, request.type_url)
                if self.viewer is None:
                    self.viewer = self._resolve(self._claims())
                self._wake.set()
        finally:
            self._wake.set()  # the loop sees the end (or the error) at once

    # -- the loop -------------------------------------------------------------

    def status(self, stream_id: int) -> XdsClientStatus:
        viewer = self.viewer or Viewer("", None)
        return self.protocol.status(
            stream_id=stream_id,
            tenant_id=viewer.tenant_id,
            tier=viewer.tier or "",
            peer=self._peer,
            connected_at=self._connected_at,
        )

    async def serve(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        """The responses of the stream, until the client closes its side (or an
        error it caused, raised as a HubError, ends the call)."""
        stream_id, unregister = self._clients.register(lambda: self.status(stream_id))
        unsubscribe = self._cache.subscribe(self._changed)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if reader.done():
                    reader.result()  # raises what ended the reading
                    return  # the client closed its side: the stream is over
                if not self.protocol.due():
                    continue
                await self._cache.ready()
                for response in self._answers():
                    yield response
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            unsubscribe()
            unregister()

    def _answers(self) -> list[discovery_pb2.DiscoveryResponse]:
        """Everything due, computed at once from one view (no await in between)."""
        assert self.viewer is not None  # set before the first request wakes the loop
        tier = self.viewer.tier
        revision = self._cache.revision
        out = []
        for type_url in self.protocol.due():
            subscription = self.protocol.subscription(type_url)
            assert subscription is not None  # due types were requested
            resources, self._services[type_url] = self._cache.for_subscription(
                type_url, subscription, tier
            )
            answer = self.protocol.respond(type_url, resources, revision)
            if answer is not None:
                response, since = answer
                latency_ms = max(0.0, self._clock() - since) * 1000 if since is not None else 0.0
                self._clients.pushed(type_url, latency_ms)
                out.append(response)
        return out
