"""Routing policies, the usable-endpoint stream, and the xDS clients of a replica.

The policy dataclasses are the one definition of a routing policy: the hub
validates and stores them (hub_server/balancing/policy.py) and builds its xDS
resources from them, clients read and set them. In a message zero fields take
the defaults (:meth:`RoutingPolicy.from_pb`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import grpc
from aitrading.hub.v1 import balancer_pb2, cluster_pb2, types_pb2

from hub_client._private.errors import channel_closed, from_rpc_error
from hub_client._private.models import _enum_name
from hub_client._private.resume import RETRYABLE, Backoff, each_within
from hub_client._private.strategies import HealthStatus, Strategy
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries xDS clients make by themselves (a route's retry policy)."""

    retry_on: tuple[str, ...] = ("unavailable",)  # gRPC status names, as envoy's retry_on
    num_retries: int = 0  # 0: no retry policy sent
    base_interval_ms: int = 25
    max_interval_ms: int = 250


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Ejection of failing endpoints by xDS clients, sent from their first
    response. Envoy ejects on ``consecutive_5xx``; proxyless gRPC clients only
    by failure percentage (the ``failure_percentage_*`` fields)."""

    interval_ms: int = 1000
    base_ejection_time_ms: int = 30_000
    max_ejection_time_ms: int = 300_000
    max_ejection_percent: int = 50
    consecutive_5xx: int = 5
    failure_percentage_threshold: int = 50
    failure_percentage_minimum_hosts: int = 2
    failure_percentage_request_volume: int = 20


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """How one service's calls are balanced (PickEndpoint when a request names no
    strategy, and xDS clients), retried, timed out and protected."""

    strategy: Strategy = Strategy.LEAST_LOAD
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_ms: int = 0  # per call, as the route's max_stream_duration; 0: none
    outlier: OutlierDetection = field(default_factory=OutlierDetection)

    @classmethod
    def from_pb(cls, m: balancer_pb2.RoutingPolicy) -> RoutingPolicy:
        """The policy a message describes, zero fields taking defaults (a
        ceiling left zero is raised to its floor). Not validated: the hub checks
        ranges. Raises ValueError for a strategy number this client does not know."""
        retry = _given(
            RetryPolicy,
            retry_on=tuple(m.retry.retry_on),
            num_retries=m.retry.num_retries,
            base_interval_ms=m.retry.base_interval_ms,
            max_interval_ms=m.retry.max_interval_ms,
        )
        if not m.retry.max_interval_ms and retry.base_interval_ms > retry.max_interval_ms:
            retry = replace(retry, max_interval_ms=retry.base_interval_ms)
        outlier = _given(
            OutlierDetection,
            **{f.name: getattr(m.outlier, f.name) for f in fields(OutlierDetection)},
        )
        if (
            not m.outlier.max_ejection_time_ms
            and outlier.base_ejection_time_ms > outlier.max_ejection_time_ms
        ):
            outlier = replace(outlier, max_ejection_time_ms=outlier.base_ejection_time_ms)
        return cls(
            strategy=Strategy(m.strategy) if m.strategy else Strategy.LEAST_LOAD,
            retry=retry,
            timeout_ms=m.timeout_ms,
            outlier=outlier,
        )

    def to_pb(self) -> balancer_pb2.RoutingPolicy:
        return balancer_pb2.RoutingPolicy(
            strategy=int(self.strategy),
            retry=balancer_pb2.RetryPolicy(**asdict(self.retry)),
            timeout_ms=self.timeout_ms,
            outlier=balancer_pb2.OutlierDetection(**asdict(self.outlier)),
        )


def _given(cls: Any, **values: Any) -> Any:
    return cls(**{k: v for k, v in values.items() if v})


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """A service's routing policy in force."""

    service: str
    policy: RoutingPolicy
    is_default: bool  # no policy is stored: the defaults apply
    revision: int


@dataclass(frozen=True, slots=True)
class UsableEndpoint:
    """One instance a caller may be routed to (``priority`` 0 HEALTHY,
    1 DEGRADED, 2 STARTING: a pick uses the lowest present)."""

    instance_id: str
    host: str
    port: int
    weight: int
    load: float
    health: HealthStatus
    priority: int
    half_open: bool
    version: str
    latency_ms: float | None  # None: not measured

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class EndpointsSnapshot:
    """Everything a caller may be routed to for one service, as a hub replica
    sees it now; replaces any earlier snapshot of the service whole.

    An empty ``endpoints`` means the service is really empty for this caller
    when ``visible`` is False (not registered, deleted, or not for its tier),
    its circuit is open (``circuit_open``), or no instance is usable now; a hub
    that cannot answer ends the stream instead of sending one.
    """

    service: str
    revision: int
    hub_id: str
    visible: bool
    circuit_open: bool
    endpoints: tuple[UsableEndpoint, ...]
    policy: RoutingPolicy

    @classmethod
    def from_pb(cls, m: balancer_pb2.WatchEndpointsResponse) -> EndpointsSnapshot:
        return cls(
            service=m.service,
            revision=m.header.revision,
            hub_id=m.header.hub_id,
            visible=m.visible,
            circuit_open=m.circuit_open,
            endpoints=tuple(
                UsableEndpoint(
                    instance_id=e.instance_id,
                    host=e.host,
                    port=e.port,
                    weight=e.weight,
                    load=e.load_factor,
                    health=HealthStatus(e.health),
                    priority=e.priority,
                    half_open=e.half_open,
                    version=e.version,
                    latency_ms=e.latency_ms or None,
                )
                for e in m.endpoints
            ),
            policy=RoutingPolicy.from_pb(m.policy),
        )


@dataclass(frozen=True, slots=True)
class XdsNack:
    """A response an xDS client rejected (it stays on its last ACKed version)."""

    type_url: str
    version: str  # the version it rejected
    nonce: str
    error: str
    at: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class XdsSubscription:
    type_url: str
    resource_names: tuple[str, ...]
    acked_version: str  # "" before the first ACK


@dataclass(frozen=True, slots=True)
class XdsClient:
    """One open xDS stream on a replica."""

    hub_id: str  # the replica it is connected to
    node_id: str
    tenant_id: str
    tier: str  # "free", "pro", "enterprise" or "" (unfiltered)
    peer: str
    connected_at: float  # seconds since the epoch
    subscriptions: tuple[XdsSubscription, ...]
    last_nack: XdsNack | None

    @classmethod
    def from_pb(cls, hub_id: str, m: cluster_pb2.XdsClient) -> XdsClient:
        nack = None
        if m.HasField("last_nack"):
            n = m.last_nack
            nack = XdsNack(n.type_url, n.version, n.nonce, n.error, n.at.ToNanoseconds() / 1e9)
        tier = _enum_name(types_pb2.SubscriptionTier, m.tier, "SUBSCRIPTION_TIER_")
        return cls(
            hub_id=hub_id,
            node_id=m.node_id,
            tenant_id=m.tenant_id,
            tier="" if tier == "unspecified" else tier,
            peer=m.peer,
            connected_at=m.connected_at.ToNanoseconds() / 1e9,
            subscriptions=tuple(
                XdsSubscription(s.type_url, tuple(s.resource_names), s.acked_version)
                for s in m.subscriptions
            ),
            last_nack=nack,
        )


class RoutingClient:
    """The routing policy and WatchEndpoints calls, and ListXdsClients."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def set_policy(
        self, service: str, policy: RoutingPolicy, *, timeout: float | None = None
    ) -> RoutingPolicy:
        t = self._transport
        resp = await t.call(
            t.balancer_stub.SetRoutingPolicy,
            balancer_pb2.SetRoutingPolicyRequest(service=service, policy=policy.to_pb()),
            timeout=timeout,
        )
        return RoutingPolicy.from_pb(resp.policy)

    async def get_policy(self, service: str, *, timeout: float | None = None) -> PolicyInfo:
        t = self._transport
        resp = await t.call(
            t.balancer_stub.GetRoutingPolicy,
            balancer_pb2.GetRoutingPolicyRequest(service=service),
            timeout=timeout,
        )
        return PolicyInfo(
            service, RoutingPolicy.from_pb(resp.policy), resp.is_default, resp.header.revision
        )

    async def delete_policy(self, service: str, *, timeout: float | None = None) -> int:
        t = self._transport
        resp = await t.call(
            t.balancer_stub.DeleteRoutingPolicy,
            balancer_pb2.DeleteRoutingPolicyRequest(service=service),
            timeout=timeout,
        )
        return int(resp.header.revision)

    def watch_endpoints(
        self,
        service: str,
        *,
        after_revision: int = 0,
        legacy_mode: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[EndpointsSnapshot]:
        snapshots = self._watch_endpoints(service, after_revision, legacy_mode)
        return each_within(snapshots, timeout, f"watch_endpoints {service}")

    async def _watch_endpoints(
        self, service: str, after_revision: int, legacy_mode: bool
    ) -> AsyncIterator[EndpointsSnapshot]:
        """Snapshots of the service's usable endpoints, across reconnects: after
        an interruption the stream is reopened from the last revision received,
        so the hub sends a snapshot again only if something changed."""
        t = self._transport
        backoff = Backoff()
        after = after_revision
        while True:
            call = t.open_stream(
                t.balancer_stub.WatchEndpoints,
                balancer_pb2.WatchEndpointsRequest(
                    service=service, after_revision=after, legacy_mode=legacy_mode
                ),
            )
            try:
                async for msg in call:
                    after = max(after, msg.header.revision)
                    backoff.reset()
                    yield EndpointsSnapshot.from_pb(msg)
                why = "the hub ended the stream"
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE:
                    raise from_rpc_error(e) from None
                why = e.code().name
            except asyncio.CancelledError:
                if channel_closed() is None:
                    raise
                why = "the channel was closed"
            finally:
                call.cancel()
                call = None  # no hold on the channel while waiting
            log.info("endpoint watch of %s interrupted (%s); reopening", service, why)
            await backoff.wait()

    async def xds_clients(self, *, timeout: float | None = None) -> list[XdsClient]:
        """The xDS clients connected to the replica this client talks to."""
        t = self._transport
        resp = await t.call(
            t.cluster_stub.ListXdsClients, cluster_pb2.ListXdsClientsRequest(), timeout=timeout
        )
        return [XdsClient.from_pb(resp.hub_id, c) for c in resp.clients]
