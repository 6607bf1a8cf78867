"""Per-service routing policy: how one service's calls are balanced (PickEndpoint
and xDS clients), retried, timed out and protected by outlier detection (xDS
clients only).

One etcd key per service under ``keys.ROUTING_POLICY`` holds the policy as JSON;
every replica mirrors the prefix, so reading a policy never touches etcd. A
service without a stored policy gets :data:`DEFAULT_POLICY`, whose strategy is
least load: what PickEndpoint has always done for a request naming no strategy
(gRPC clients have no least-load policy and get round_robin for it).

The policy dataclasses are hub_client's (one definition for the hub, which
validates, stores and serves them, and for clients); zero values in a request
take the defaults (``RoutingPolicy.from_pb``, the proto's rule), and a policy is
validated whole before it is stored, each bad field named by its request path
(``policy.retry.num_retries``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from typing import Any

from aitrading.hub.v1 import balancer_pb2
from aitrading.hub.v1.errors_pb2 import ERROR_REASON_NOT_FOUND

from hub_client import OutlierDetection, RetryPolicy, RoutingPolicy, Strategy
from hub_server.kernel import validation
from hub_server.kernel.errors import InvalidArgument, NotFound, Violations
from hub_server.registry.service import on_service_change
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import PrefixMirror

# gRPC status names a route may retry on, spelled as envoy's retry_on (the ones
# proxyless gRPC clients honour).
RETRYABLE = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
# gRPC clients make at most five attempts (retries + 1) whatever they are told.
MAX_RETRIES = 4
DAY_MS = 86_400_000
# The strategy numbers a request may carry. BalancingStrategy.values() builds a
# list on every call: a tenth of a PickEndpoint's own CPU when checked per call.
STRATEGIES = frozenset(balancer_pb2.BalancingStrategy.values())


def violations(policy: RoutingPolicy, path: str = "policy") -> Violations:
    """Every out-of-range field of ``policy``, named by its request path; empty
    if valid."""
    v = Violations()
    if not isinstance(policy.strategy, Strategy):
        v.add(f"{path}.strategy", "is not a known strategy")
    validation.check_range(v, f"{path}.timeout_ms", policy.timeout_ms, 0, DAY_MS)
    r, rp = policy.retry, f"{path}.retry"
    if not r.retry_on:
        v.add(f"{rp}.retry_on", "must name at least one status")
    for i, name in enumerate(r.retry_on):
        if name not in RETRYABLE:
            v.add(f"{rp}.retry_on[{i}]", f"must be one of {', '.join(RETRYABLE)}")
    validation.check_range(v, f"{rp}.num_retries", r.num_retries, 0, MAX_RETRIES)
    validation.check_range(v, f"{rp}.base_interval_ms", r.base_interval_ms, 1, 60_000)
    validation.check_range(v, f"{rp}.max_interval_ms", r.max_interval_ms, 1, 600_000)
    if r.max_interval_ms < r.base_interval_ms:
        v.add(f"{rp}.max_interval_ms", "must be at least base_interval_ms")
    o, op = policy.outlier, f"{path}.outlier"
    for name, low, high in (
        ("interval_ms", 100, 3_600_000),
        ("base_ejection_time_ms", 100, 3_600_000),
        ("max_ejection_time_ms", 1, DAY_MS),
        ("max_ejection_percent", 1, 100),
        ("consecutive_5xx", 1, 1000),
        ("failure_percentage_threshold", 1, 100),
        ("failure_percentage_minimum_hosts", 1, 1000),
        ("failure_percentage_request_volume", 1, 1_000_000),
    ):
        validation.check_range(v, f"{op}.{name}", getattr(o, name), low, high)
    if o.max_ejection_time_ms < o.base_ejection_time_ms:
        v.add(f"{op}.max_ejection_time_ms", "must be at least base_ejection_time_ms")
    return v


def from_request(msg: balancer_pb2.RoutingPolicy) -> RoutingPolicy:
    """The policy a request asks for, defaults filled in, or InvalidArgument
    naming every bad field."""
    if msg.strategy not in STRATEGIES:
        raise InvalidArgument.single("policy.strategy", "is not a known strategy")
    policy = RoutingPolicy.from_pb(msg)
    violations(policy).raise_if_any()
    return policy


def to_json(policy: RoutingPolicy) -> bytes:
    d = asdict(policy)
    d["strategy"] = policy.strategy.name
    return json.dumps(d, sort_keys=True).encode()


def from_json(raw: bytes) -> RoutingPolicy:
    """A stored policy; fields a newer hub added and this one does not know are
    ignored, missing ones take defaults."""
    d = json.loads(raw)
    retry = _known(RetryPolicy, d.get("retry", {}))
    if "retry_on" in retry:
        retry["retry_on"] = tuple(retry["retry_on"])
    return RoutingPolicy(
        strategy=Strategy[d.get("strategy", DEFAULT_POLICY.strategy.name)],
        retry=RetryPolicy(**retry),
        timeout_ms=int(d.get("timeout_ms", 0)),
        outlier=OutlierDetection(**_known(OutlierDetection, d.get("outlier", {}))),
    )


def _known(cls: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


DEFAULT_POLICY = RoutingPolicy()


def _decode(kv: KeyValue) -> RoutingPolicy:
    return from_json(kv.value)


class RoutingPolicies:
    """Every stored routing policy, mirrored from etcd (one per replica, built in
    hub_server/wiring.py)."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store
        self.mirror: PrefixMirror[RoutingPolicy] = PrefixMirror(store, keys.ROUTING_POLICY, _decode)

    @property
    def revision(self) -> int:
        return self.mirror.revision

    def ensure_live(self) -> None:
        self.mirror.ensure_live()

    def stored(self, service: str) -> RoutingPolicy | None:
        """The service's stored policy; None when it has none."""
        return self.mirror.items.get(keys.routing_policy_key(service))

    def get(self, service: str) -> RoutingPolicy:
        """The policy in force: the stored one, else :data:`DEFAULT_POLICY`."""
        return self.stored(service) or DEFAULT_POLICY

    def on_service_change(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(service)`` after the service's policy changes."""
        on_service_change(self.mirror, callback)

    async def set(self, service: str, policy: RoutingPolicy) -> int:
        """Stores a validated policy (InvalidArgument naming the bad fields);
        returns the write's revision once this replica's mirror holds it."""
        v = Violations()
        validation.check_dns_label(v, "service", service)
        v.items.extend(violations(policy).items)
        v.raise_if_any()
        revision = await self._store.put(keys.routing_policy_key(service), to_json(policy))
        await self.mirror.barrier()
        return revision

    async def delete(self, service: str) -> int:
        """Drops the service's stored policy; NotFound when none is stored."""
        v = Violations()
        validation.check_dns_label(v, "service", service)
        v.raise_if_any()
        deleted, revision = await self._store.delete(keys.routing_policy_key(service))
        if not deleted:
            raise NotFound(
                f"service {service!r} has no stored routing policy",
                reason=ERROR_REASON_NOT_FOUND,
                service=service,
            )
        await self.mirror.barrier()
        return revision
