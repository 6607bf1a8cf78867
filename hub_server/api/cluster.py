"""ClusterService: which replicas run and which one leads."""

from __future__ import annotations

from aitrading.hub.v1 import cluster_pb2, cluster_pb2_grpc

from hub_server.rpc.header import response_header
from hub_server.store.election import Election
from hub_server.store.mirror import PrefixMirror


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(
        self, replicas: PrefixMirror[cluster_pb2.Replica], election: Election, hub_id: str
    ) -> None:
        self._replicas = replicas
        self._election = election
        self._hub_id = hub_id

    async def GetClusterStatus(self, request, context):
        leader = self._election.leader_id
        replicas = []
        for r in sorted(self._replicas.items.values(), key=lambda r: r.hub_id):
            copy = cluster_pb2.Replica()
            copy.CopyFrom(r)
            copy.leader = r.hub_id == leader
            replicas.append(copy)
        return cluster_pb2.GetClusterStatusResponse(
            header=response_header(self._hub_id, self._replicas.revision),
            hub_id=self._hub_id,
            leader_id=leader,
            replicas=replicas,
        )
