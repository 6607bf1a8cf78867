"""ClusterService: which replicas run and which one leads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aitrading.hub.v1 import cluster_pb2, cluster_pb2_grpc

from hub_client import version_info
from hub_server.rpc.header import response_header


class Replicas(Protocol):
    """The replicas' presence records (a PrefixMirror of them)."""

    @property
    def items(self) -> Mapping[bytes, cluster_pb2.Replica]: ...
    @property
    def revision(self) -> int: ...


class Leadership(Protocol):
    """Who leads (hub_server.store.election.Election)."""

    @property
    def leader_id(self) -> str: ...


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(self, replicas: Replicas, election: Leadership, hub_id: str) -> None:
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
            version=version_info().build,
        )
