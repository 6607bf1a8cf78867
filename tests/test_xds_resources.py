"""The envoy resources of a service (hub_server/xds/resources.py), pure: what a
projection and a routing policy become."""

from __future__ import annotations

from dataclasses import replace

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from hub_client import HealthStatus, OutlierDetection, RetryPolicy, RoutingPolicy, Strategy
from hub_server.balancing.policy import DEFAULT_POLICY
from hub_server.balancing.projection import ServiceEndpoints, UsableEndpoint
from hub_server.xds import resources
from hub_server.xds.resources import service_resources

RANK = {HealthStatus.HEALTHY: 0, HealthStatus.DEGRADED: 1, HealthStatus.STARTING: 2}


def endpoint(
    iid: str, health: HealthStatus = HealthStatus.HEALTHY, *, host: str = "10.0.0.1",
    port: int = 9000, weight: int = 100, half_open: bool = False,
) -> UsableEndpoint:  # fmt: skip
    return UsableEndpoint(iid, host, port, weight, 0.0, health, RANK[health], half_open, "1")


def projected(
    *endpoints: UsableEndpoint, visible: bool = True, circuit_open: bool = False
) -> ServiceEndpoints:
    return ServiceEndpoints("quotes", 42, visible, circuit_open, tuple(endpoints))


def test_listener_takes_routes_over_ads_and_ends_with_the_router() -> None:
    lis = service_resources(projected(), DEFAULT_POLICY).listener
    assert lis.name == "quotes"
    manager = hcm_pb2.HttpConnectionManager()
    assert lis.api_listener.api_listener.Unpack(manager)
    assert manager.rds.route_config_name == "quotes"
    assert manager.rds.config_source.HasField("ads")
    last = manager.http_filters[-1]
    assert last.name == "envoy.filters.http.router"
    assert last.typed_config.Is(router_pb2.Router.DESCRIPTOR)


def test_route_carries_retries_timeout_and_hash_policy() -> None:
    plain = service_resources(projected(), DEFAULT_POLICY).route_configuration
    assert plain.name == "quotes"
    (host,) = plain.virtual_hosts
    assert list(host.domains) == ["*"]
    (route,) = host.routes
    assert route.match.prefix == "" and route.route.cluster == "quotes"
    assert not route.route.HasField("retry_policy")  # num_retries 0: none sent
    assert not route.route.HasField("max_stream_duration")
    assert not route.route.hash_policy

    policy = RoutingPolicy(
        strategy=Strategy.CONSISTENT_HASH,
        retry=RetryPolicy(
            retry_on=("unavailable", "cancelled"),
            num_retries=3,
            base_interval_ms=20,
            max_interval_ms=400,
        ),
        timeout_ms=1500,
    )
    action = service_resources(projected(), policy).route_configuration.virtual_hosts[0]
    action_ = action.routes[0].route
    retry = action_.retry_policy
    assert retry.retry_on == "unavailable,cancelled" and retry.num_retries.value == 3
    assert retry.retry_back_off.base_interval.ToMilliseconds() == 20
    assert retry.retry_back_off.max_interval.ToMilliseconds() == 400
    assert action_.max_stream_duration.max_stream_duration.ToMilliseconds() == 1500
    (hashing,) = action_.hash_policy
    assert hashing.header.header_name == "x-user-id"


@pytest.mark.parametrize("strategy", list(Strategy))
def test_cluster_is_eds_over_ads_with_the_strategy_policy(strategy: Strategy) -> None:
    res = service_resources(projected(endpoint("a")), RoutingPolicy(strategy=strategy))
    c = res.cluster
    assert c.name == "quotes" and c.type == cluster_pb2.Cluster.EDS
    assert c.eds_cluster_config.eds_config.HasField("ads")
    # The assignment is found by the cluster's service_name.
    assert c.eds_cluster_config.service_name == res.cluster_load_assignment.cluster_name
    if strategy is Strategy.CONSISTENT_HASH:
        assert c.lb_policy == cluster_pb2.Cluster.RING_HASH
        assert c.ring_hash_lb_config.minimum_ring_size.value >= 1024
    else:  # gRPC clients have no least-load or latency policy (least_request is refused)
        assert c.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert resources.LB_POLICY[strategy] in ("round_robin", "ring_hash")


def test_outlier_detection_is_always_sent_from_the_policy() -> None:
    default = service_resources(projected(), DEFAULT_POLICY).cluster.outlier_detection
    assert default.interval.ToMilliseconds() == 1000
    assert default.enforcing_failure_percentage.value == 100  # else gRPC ignores it
    # Explicitly off (it is on when unset; grpc-js then crashes on its unset fields).
    assert default.HasField("enforcing_success_rate")
    assert default.enforcing_success_rate.value == 0
    custom = OutlierDetection(interval_ms=500, base_ejection_time_ms=2000,
                              max_ejection_time_ms=9000, max_ejection_percent=30,
                              consecutive_5xx=7, failure_percentage_threshold=60,
                              failure_percentage_minimum_hosts=3,
                              failure_percentage_request_volume=10)  # fmt: skip
    od = service_resources(projected(), replace(DEFAULT_POLICY, outlier=custom)).cluster
    got = od.outlier_detection
    assert (got.interval.ToMilliseconds(), got.base_ejection_time.ToMilliseconds(),
            got.max_ejection_time.ToMilliseconds(), got.max_ejection_percent.value,
            got.consecutive_5xx.value, got.failure_percentage_threshold.value,
            got.failure_percentage_minimum_hosts.value,
            got.failure_percentage_request_volume.value) == (
        500, 2000, 9000, 30, 7, 60, 3, 10)  # fmt: skip


def _localities(endpoints: ServiceEndpoints) -> list[tuple[str, str, int, int, int]]:
    cla = service_resources(endpoints, DEFAULT_POLICY).cluster_load_assignment
    out = []
    for loc in cla.endpoints:
        (lb,) = loc.lb_endpoints
        assert lb.health_status == health_check_pb2.HEALTHY  # clients skip DEGRADED ones
        assert loc.load_balancing_weight.value > 0  # else clients drop the locality
        sock = lb.endpoint.address.socket_address
        out.append(
            (loc.locality.sub_zone, sock.address, sock.port_value, loc.priority,
             loc.load_balancing_weight.value)
        )  # fmt: skip
    return out


def test_assignment_has_one_weighted_locality_per_usable_endpoint_by_priority() -> None:
    got = _localities(
        projected(
            endpoint("h1", weight=100),
            endpoint("h2", weight=300, port=9001, half_open=True),
            endpoint("d", HealthStatus.DEGRADED, host="::1"),
            endpoint("s", HealthStatus.STARTING, host="localhost"),
        )
    )
    assert got == [
        ("h1", "10.0.0.1", 9000, 0, 100),
        ("h2", "10.0.0.1", 9001, 0, 300),
        ("d", "::1", 9000, 1, 100),
        ("s", "127.0.0.1", 9000, 2, 100),
    ]


def test_priorities_have_no_gaps() -> None:
    # No HEALTHY endpoint: the DEGRADED ones are priority 0 (clients reject a
    # priority list with a hole).
    got = _localities(
        projected(endpoint("d", HealthStatus.DEGRADED), endpoint("s", HealthStatus.STARTING))
    )
    assert [(iid, prio) for iid, _, _, prio, _ in got] == [("d", 0), ("s", 1)]


def test_host_names_are_not_offered() -> None:
    # gRPC xDS clients take IP addresses only; a host name would make them NACK.
    got = _localities(projected(endpoint("named", host="db.internal"), endpoint("ip")))
    assert [iid for iid, *_ in got] == ["ip"]


@pytest.mark.parametrize(
    "endpoints",
    [
        projected(endpoint("a"), visible=False),
        projected(endpoint("a"), circuit_open=True),
        projected(),
    ],
)
def test_revoked_or_open_service_gets_an_empty_assignment(endpoints: ServiceEndpoints) -> None:
    cla = service_resources(endpoints, DEFAULT_POLICY).cluster_load_assignment
    assert cla.cluster_name == "quotes" and not cla.endpoints


def test_equal_inputs_give_equal_bytes() -> None:
    # The ADS server resends a resource only when its serialized form changed.
    a = service_resources(projected(endpoint("a")), DEFAULT_POLICY)
    b = service_resources(replace(projected(endpoint("a")), revision=43), DEFAULT_POLICY)
    for field in ("listener", "route_configuration", "cluster", "cluster_load_assignment"):
        assert getattr(a, field).SerializeToString(deterministic=True) == getattr(
            b, field
        ).SerializeToString(deterministic=True)
