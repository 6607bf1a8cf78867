"""The hub about itself: its replicas and which one leads."""

from __future__ import annotations

from aitrading.hub.v1 import cluster_pb2

from hub_client._private.transport import Transport


class ClusterClient:
    """The ClusterService calls."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def status(self) -> cluster_pb2.GetClusterStatusResponse:
        t = self._transport
        resp: cluster_pb2.GetClusterStatusResponse = await t.call(
            t.cluster_stub.GetClusterStatus, cluster_pb2.GetClusterStatusRequest()
        )
        return resp
