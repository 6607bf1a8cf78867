"""AggregatedDiscoveryService (envoy's ADS, state of the world, v3): the hub as
the xDS control plane of proxyless gRPC clients. Served on the hub's main
listener through the same call path as every hub RPC (authentication, the role
table, per-caller stream limits, telemetry); the stream itself is
hub_server/xds/stream.py.

Whose view a stream gets: on a hub with credentials, the caller's credential
decides (a client certificate bound to a tenant gets that tenant's stored
tier); node metadata is not believed. On a hub without credentials, the
node's metadata (``tenant_id``, ``tier``) speaks for the client, as tenant
headers do for any call there. The tier follows the tenant's record while the
stream is open: a downgraded tenant's clients lose what the new tier may not
use at once (empty ClusterLoadAssignments).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from hub_server.kernel.tiers import view_tier
from hub_server.rpc.context import CallContext, current
from hub_server.xds.cache import ResourceCache
from hub_server.xds.clients import XdsClients
from hub_server.xds.protocol import NodeClaims
from hub_server.xds.stream import AdsStream, Resolve, Viewer

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "StreamAggregatedResources"


class AggregatedDiscoveryServicer:
    """Args:
    cache: The replica's shared resources.
    clients: The replica's table of open xDS streams.
    credentials: The hub authenticates its callers (node metadata is then ignored).
    tier_of: A tenant's stored tier ("" when it has no record).
    on_tenant_change: Registers a callback called with a tenant id whenever its
        record changes.
    """

    def __init__(
        self,
        cache: ResourceCache,
        clients: XdsClients,
        *,
        credentials: bool,
        tier_of: Callable[[str], str],
        on_tenant_change: Callable[[Callable[[str], None]], None],
    ) -> None:
        self._cache = cache
        self._clients = clients
        self._credentials = credentials
        self._tier_of = tier_of
        self._streams: set[AdsStream] = set()
        on_tenant_change(self._tenant_changed)

    def _tenant_changed(self, tenant_id: str) -> None:
        for stream in list(self._streams):
            if stream.viewer is not None and stream.viewer.tenant_id == tenant_id:
                stream.retier()

    def _resolver(self, call: CallContext) -> Resolve:
        tenant_bound = bool(call.caller.tenant)

        def resolve(claims: NodeClaims) -> Viewer:
            if self._credentials:
                # The credential's tenant (or, for an admin or gateway, its headers).
                tenant, claimed_tier = call.tenant_id, call.subscription_tier
            else:
                tenant = claims.tenant_id or call.tenant_id
                claimed_tier = claims.tier or call.subscription_tier
            # A tenant's stored tier wins over any claim, as for every call.
            tier = (self._tier_of(tenant) if tenant else "") or claimed_tier
            return Viewer(
                tenant,
                view_tier(
                    tier,
                    has_tenant=bool(tenant or claimed_tier),
                    tenant_bound=tenant_bound,
                    legacy_mode=False,
                ),
            )

        return resolve

    async def StreamAggregatedResources(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = AdsStream(
            self._cache, self._clients, self._resolver(current()), peer=context.peer() or ""
        )
        self._streams.add(stream)
        try:
            async for response in stream.serve(requests):
                yield response
        finally:
            self._streams.discard(stream)


def add_to_server(servicer: AggregatedDiscoveryServicer, server: Any) -> None:
    """Registers the state-of-the-world method only: a client asking for the
    incremental (delta) variant gets grpc's UNIMPLEMENTED, and falls back."""
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.StreamAggregatedResources,
        request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
        response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
    )
    server.add_registered_method_handlers(SERVICE, {METHOD: handler})
