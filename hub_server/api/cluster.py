"""ClusterService: which replicas run and which one leads, and the xDS clients
connected to this replica."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aitrading.hub.v1 import cluster_pb2, cluster_pb2_grpc, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from hub_client import version_info
from hub_server.api.config import TIER_VALUES
from hub_server.rpc.header import response_header
from hub_server.xds.clients import XdsClientStatus


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


class XdsStreams(Protocol):
    """The replica's open ADS streams (hub_server.xds.clients.XdsClients)."""

    def snapshot(self) -> list[XdsClientStatus]: ...


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def xds_client_message(status: XdsClientStatus) -> cluster_pb2.XdsClient:
    message = cluster_pb2.XdsClient(
        node_id=status.node_id,
        tenant_id=status.tenant_id,
        tier=TIER_VALUES.get(status.tier, types_pb2.SUBSCRIPTION_TIER_UNSPECIFIED),
        peer=status.peer,
        connected_at=_timestamp(status.connected_at),
        subscriptions=[
            cluster_pb2.XdsSubscription(
                type_url=type_url,
                resource_names=names,
                acked_version=status.acked_version.get(type_url, ""),
            )
            for type_url, names in sorted(status.subscribed.items())
        ],
    )
    nack = status.last_nack
    if nack is not None:
        message.last_nack.CopyFrom(
            cluster_pb2.XdsNack(
                type_url=nack.type_url,
                version=nack.rejected_version,
                nonce=nack.nonce,
                error=nack.error,
                at=_timestamp(nack.at),
            )
        )
    return message


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(
        self,
        replicas: Replicas,
        election: Leadership,
        hub_id: str,
        xds_clients: XdsStreams | None = None,
    ) -> None:
        self._replicas = replicas
        self._election = election
        self._hub_id = hub_id
        self._xds_clients = xds_clients

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

    async def ListXdsClients(self, request, context):
        statuses = self._xds_clients.snapshot() if self._xds_clients is not None else []
        return cluster_pb2.ListXdsClientsResponse(
            header=response_header(self._hub_id, self._replicas.revision),
            hub_id=self._hub_id,
            clients=[xds_client_message(s) for s in statuses],
        )
