"""A raw ADS stream that subscribes to one CDS resource and ACKs or NACKs the
answer, as a proxyless gRPC client would: what operators' views of xDS clients
(ListXdsClients, hubctl xds clients, the dashboard) are tested with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from hub_server.app import Hub
from hub_server.xds.protocol import CLUSTER, node_metadata


@asynccontextmanager
async def ads_stream(
    hub: Hub,
    node_id: str,
    *,
    service: str = "pricing",
    nack: str = "",
    tenant_id: str = "",
    tier: str = "",
) -> AsyncIterator[grpc.aio.StreamStreamCall]:
    """Asks ``hub`` for the Cluster named ``service``, then ACKs the answer, or
    NACKs it with the error ``nack``; the stream stays open inside the block."""
    async with grpc.aio.insecure_channel(hub.address) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        try:
            first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, resource_names=[service])
            first.node.CopyFrom(base_pb2.Node(id=node_id, metadata=node_metadata(tenant_id, tier)))
            await call.write(first)
            answer = await call.read()
            reply = discovery_pb2.DiscoveryRequest(
                type_url=CLUSTER, resource_names=[service], response_nonce=answer.nonce
            )
            if nack:
                reply.error_detail.CopyFrom(status_pb2.Status(code=3, message=nack))
            else:
                reply.version_info = answer.version_info
            await call.write(reply)
            yield call
        finally:
            call.cancel()
