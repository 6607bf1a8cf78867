"""The hub about itself: its replicas and which one leads."""

from __future__ import annotations

from aitrading.hub.v1 import cluster_pb2

from hub_client._private.models import ClusterStatus
from hub_client._private.transport import Transport


class ClusterClient:
    """The ClusterService calls."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def status(self, *, timeout: float | None = None) -> ClusterStatus:
        t = self._transport
        resp = await t.call(
            t.cluster_stub.GetClusterStatus, cluster_pb2.GetClusterStatusRequest(), timeout=timeout
        )
        return ClusterStatus.from_pb(resp)
