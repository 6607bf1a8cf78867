"""Envoy resources of one service, as one tier sees it (pure: no I/O).

From a :class:`~hub_server.balancing.projection.ServiceEndpoints` (the usable
set, ranked as PickEndpoint ranks it) and the service's
:class:`~hub_server.balancing.policy.RoutingPolicy`, the four resources a
proxyless gRPC client needs for ``xds:///<service>``, all named as the service:

- Listener: ``api_listener`` holding an HttpConnectionManager that takes its
  routes over ADS (RDS) and ends its filters with the Router (grpcio NACKs a
  listener without it).
- RouteConfiguration: every call to the cluster, with the policy's retries,
  ``max_stream_duration`` from ``timeout_ms``, and for CONSISTENT_HASH a hash
  policy on the ``x-user-id`` header (PickEndpoint's stickiness key).
- Cluster: EDS over ADS, the load-balancing policy of the strategy
  (:data:`LB_POLICY`), outlier detection always (grpc-js applies it only when
  present from the channel's start).
- ClusterLoadAssignment: the usable endpoints only, one locality per endpoint
  whose ``load_balancing_weight`` is the instance weight (gRPC's round_robin
  ignores endpoint weights but honours locality weights), at EDS priorities in
  PickEndpoint's order: HEALTHY, then DEGRADED, then STARTING, numbered from 0
  without gaps (clients reject a sparse priority list). Empty when the tier may
  not see the service or its circuit is open: clients ignore resource deletion
  (the bootstrap asks them to), so emptying is how access is revoked.

Clients route only to endpoints whose health is UNKNOWN or HEALTHY, so every
usable endpoint is sent as HEALTHY; its rank is carried by the priority.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from hub_client import Strategy
from hub_server.balancing.policy import RoutingPolicy
from hub_server.balancing.projection import ServiceEndpoints, UsableEndpoint

# What each strategy becomes in a proxyless gRPC client. Neither grpcio nor
# grpc-js has a least-load or latency-aware policy (both refuse least_request),
# so those strategies fall back to weighted round robin.
LB_POLICY: dict[Strategy, str] = {
    Strategy.LEAST_LOAD: "round_robin",
    Strategy.ROUND_ROBIN: "round_robin",
    Strategy.WEIGHTED: "round_robin",
    Strategy.LATENCY_AWARE: "round_robin",
    Strategy.CONSISTENT_HASH: "ring_hash",
}
# The header a ring_hash route hashes: the stickiness key PickEndpoint uses.
AFFINITY_HEADER = "x-user-id"
ROUTER_FILTER = "envoy.filters.http.router"
# gRPC clients cap their rings at 4096 entries unless told otherwise; 1024 keeps
# each of a few dozen endpoints' share of keys within a few percent.
RING_SIZE = (1024, 8192)


@dataclass(frozen=True, slots=True)
class ServiceResources:
    listener: listener_pb2.Listener
    route_configuration: route_pb2.RouteConfiguration
    cluster: cluster_pb2.Cluster
    cluster_load_assignment: endpoint_pb2.ClusterLoadAssignment


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _ms(value: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(value)
    return d


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def listener(service: str) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=service,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=service),
        http_filters=[
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=_packed(router_pb2.Router()))
        ],
    )
    return listener_pb2.Listener(
        name=service, api_listener=api_listener_pb2.ApiListener(api_listener=_packed(manager))
    )


def route_configuration(service: str, policy: RoutingPolicy) -> route_pb2.RouteConfiguration:
    action = route_components_pb2.RouteAction(cluster=service)
    retry = policy.retry
    if retry.num_retries > 0:
        action.retry_policy.CopyFrom(
            route_components_pb2.RetryPolicy(
                retry_on=",".join(retry.retry_on),
                num_retries=wrappers_pb2.UInt32Value(value=retry.num_retries),
                retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
                    base_interval=_ms(retry.base_interval_ms),
                    max_interval=_ms(retry.max_interval_ms),
                ),
            )
        )
    if policy.timeout_ms > 0:
        action.max_stream_duration.max_stream_duration.CopyFrom(_ms(policy.timeout_ms))
    if policy.strategy is Strategy.CONSISTENT_HASH:
        action.hash_policy.append(
            route_components_pb2.RouteAction.HashPolicy(
                header=route_components_pb2.RouteAction.HashPolicy.Header(
                    header_name=AFFINITY_HEADER
                )
            )
        )
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""), route=action
    )
    host = route_components_pb2.VirtualHost(name=service, domains=["*"], routes=[route])
    return route_pb2.RouteConfiguration(name=service, virtual_hosts=[host])


def cluster(service: str, policy: RoutingPolicy) -> cluster_pb2.Cluster:
    o = policy.outlier
    found = cluster_pb2.Cluster(
        name=service,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=service
        ),
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            interval=_ms(o.interval_ms),
            base_ejection_time=_ms(o.base_ejection_time_ms),
            max_ejection_time=_ms(o.max_ejection_time_ms),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=o.max_ejection_percent),
            consecutive_5xx=wrappers_pb2.UInt32Value(value=o.consecutive_5xx),
            # gRPC clients eject by failure percentage only, and only when enforced.
            failure_percentage_threshold=wrappers_pb2.UInt32Value(
                value=o.failure_percentage_threshold
            ),
            failure_percentage_minimum_hosts=wrappers_pb2.UInt32Value(
                value=o.failure_percentage_minimum_hosts
            ),
            failure_percentage_request_volume=wrappers_pb2.UInt32Value(
                value=o.failure_percentage_request_volume
            ),
            enforcing_failure_percentage=wrappers_pb2.UInt32Value(value=100),
            # Success-rate ejection is on unless turned off, and the policy does not
            # configure it: off. (grpc-js 1.14 with it on and its fields unset
            # throws from a timer and takes the client process down.)
            enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
        ),
    )
    if LB_POLICY[policy.strategy] == "ring_hash":
        found.lb_policy = cluster_pb2.Cluster.RING_HASH
        found.ring_hash_lb_config.CopyFrom(
            cluster_pb2.Cluster.RingHashLbConfig(
                minimum_ring_size=wrappers_pb2.UInt64Value(value=RING_SIZE[0]),
                maximum_ring_size=wrappers_pb2.UInt64Value(value=RING_SIZE[1]),
            )
        )
    else:
        found.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
    return found


def ip_address(host: str) -> str | None:
    """The IP literal a client may connect to (gRPC xDS clients take no host
    names in EDS); "localhost" is the loopback address; None for other names."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _locality(
    endpoint: UsableEndpoint, address: str, priority: int
) -> endpoint_components_pb2.LocalityLbEndpoints:
    weight = wrappers_pb2.UInt32Value(value=max(1, endpoint.weight))
    lb_endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=address, port_value=endpoint.port)
            )
        ),
        health_status=health_check_pb2.HEALTHY,
    )
    return endpoint_components_pb2.LocalityLbEndpoints(
        # One locality per endpoint, named by the instance, carrying its weight
        # (the endpoint's own weight stays 1: ring_hash multiplies the two).
        locality=base_pb2.Locality(sub_zone=endpoint.instance_id),
        lb_endpoints=[lb_endpoint],
        load_balancing_weight=weight,
        priority=priority,
    )


def cluster_load_assignment(endpoints: ServiceEndpoints) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=endpoints.service)
    if not endpoints.visible or endpoints.circuit_open:
        return assignment
    placed = [(e, ip_address(e.host)) for e in endpoints.endpoints]
    ranks = sorted({e.priority for e, address in placed if address is not None})
    dense = {rank: n for n, rank in enumerate(ranks)}  # 0, 1, 2 without gaps
    for endpoint, address in placed:
        if address is not None:
            assignment.endpoints.append(_locality(endpoint, address, dense[endpoint.priority]))
    return assignment


def service_resources(endpoints: ServiceEndpoints, policy: RoutingPolicy) -> ServiceResources:
    """The four resources of a service for one tier's view of it."""
    service = endpoints.service
    return ServiceResources(
        listener=listener(service),
        route_configuration=route_configuration(service, policy),
        cluster=cluster(service, policy),
        cluster_load_assignment=cluster_load_assignment(endpoints),
    )
