"""Per-service routing policy: how one service's calls are balanced (PickEndpoint
and xDS clients), retried, timed out and protected by outlier detection (xDS
clients only).

One etcd key per service under ``keys.ROUTING_POLICY`` holds the policy as JSON;
every replica mirrors the prefix, so reading a policy never touches etcd. A
service without a stored policy gets :data:`DEFAULT_POLICY`, whose strategy is
least load: what PickEndpoint has always done for a request naming no strategy
(gRPC clients have no least-load policy and get round_robin for it).

Zero values in a request take the defaults (:meth:`RoutingPolicy.with_defaults`,
the proto's rule), and a policy is validated whole before it is stored, each bad
field named by its request path (``policy.retry.num_retries``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from aitrading.hub.v1 import balancer_pb2
from aitrading.hub.v1.errors_pb2 import ERROR_REASON_NOT_FOUND

from hub_client import Strategy
from hub_server.kernel import validation
from hub_server.kernel.errors import NotFound, Violations
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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_on: tuple[str, ...] = ("unavailable",)  # gRPC status names, as envoy's retry_on
    num_retries: int = 0  # 0: no retry policy sent
    base_interval_ms: int = 25
    max_interval_ms: int = 250


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Sent to every xDS client from the first response. Envoy ejects on
    ``consecutive_5xx``; proxyless gRPC clients implement only the success-rate
    and failure-percentage algorithms, so the failure-percentage fields are what
    protects them."""

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
    strategy: Strategy = Strategy.LEAST_LOAD
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_ms: int = 0  # per-route max_stream_duration; 0: none
    outlier: OutlierDetection = field(default_factory=OutlierDetection)

    def validate(self, path: str = "policy") -> Violations:
        """Every out-of-range field, named by its request path; empty if valid."""
        v = Violations()
        if not isinstance(self.strategy, Strategy):
            v.add(f"{path}.strategy", "is not a known strategy")
        validation.check_range(v, f"{path}.timeout_ms", self.timeout_ms, 0, DAY_MS)
        r, rp = self.retry, f"{path}.retry"
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
        o, op = self.outlier, f"{path}.outlier"
        validation.check_range(v, f"{op}.interval_ms", o.interval_ms, 100, 3_600_000)
        validation.check_range(
            v, f"{op}.base_ejection_time_ms", o.base_ejection_time_ms, 100, 3_600_000
        )
        validation.check_range(v, f"{op}.max_ejection_time_ms", o.max_ejection_time_ms, 1, DAY_MS)
        if o.max_ejection_time_ms < o.base_ejection_time_ms:
            v.add(f"{op}.max_ejection_time_ms", "must be at least base_ejection_time_ms")
        validation.check_range(v, f"{op}.max_ejection_percent", o.max_ejection_percent, 1, 100)
        validation.check_range(v, f"{op}.consecutive_5xx", o.consecutive_5xx, 1, 1000)
        validation.check_range(
            v, f"{op}.failure_percentage_threshold", o.failure_percentage_threshold, 1, 100
        )
        validation.check_range(
            v, f"{op}.failure_percentage_minimum_hosts", o.failure_percentage_minimum_hosts, 1, 1000
        )
        validation.check_range(
            v,
            f"{op}.failure_percentage_request_volume",
            o.failure_percentage_request_volume,
            1,
            1_000_000,
        )
        return v

    # -- the proto (zero fields take defaults) and the stored JSON --------------

    @classmethod
    def from_proto(cls, msg: balancer_pb2.RoutingPolicy) -> RoutingPolicy:
        """The policy a request asks for, defaults filled in; not validated (an
        unknown strategy number stays an int, which ``validate`` names)."""
        retry = _with_defaults(
            RetryPolicy,
            retry_on=tuple(msg.retry.retry_on),
            num_retries=msg.retry.num_retries,
            base_interval_ms=msg.retry.base_interval_ms,
            max_interval_ms=msg.retry.max_interval_ms,
        )
        if not msg.retry.max_interval_ms and retry.base_interval_ms > retry.max_interval_ms:
            retry = replace(retry, max_interval_ms=retry.base_interval_ms)
        outlier = _with_defaults(
            OutlierDetection,
            **{f.name: getattr(msg.outlier, f.name) for f in fields(OutlierDetection)},
        )
        if not msg.outlier.max_ejection_time_ms:
            outlier = replace(
                outlier,
                max_ejection_time_ms=max(
                    outlier.max_ejection_time_ms, outlier.base_ejection_time_ms
                ),
            )
        strategy: Any = msg.strategy
        if strategy in Strategy._value2member_map_:
            strategy = Strategy(strategy)
        return cls(
            strategy=strategy or DEFAULT_POLICY.strategy,
            retry=retry,
            timeout_ms=msg.timeout_ms,
            outlier=outlier,
        )

    def to_proto(self) -> balancer_pb2.RoutingPolicy:
        return balancer_pb2.RoutingPolicy(
            strategy=int(self.strategy),
            retry=balancer_pb2.RetryPolicy(**asdict(self.retry)),
            timeout_ms=self.timeout_ms,
            outlier=balancer_pb2.OutlierDetection(**asdict(self.outlier)),
        )

    def to_json(self) -> bytes:
        d = asdict(self)
        d["strategy"] = self.strategy.name
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RoutingPolicy:
        """A stored policy; fields a newer hub added and this one does not know
        are ignored, missing ones take defaults."""
        d = json.loads(raw)
        retry = _known(RetryPolicy, d.get("retry", {}))
        if "retry_on" in retry:
            retry["retry_on"] = tuple(retry["retry_on"])
        return cls(
            strategy=Strategy[d.get("strategy", DEFAULT_POLICY.strategy.name)],
            retry=RetryPolicy(**retry),
            timeout_ms=int(d.get("timeout_ms", 0)),
            outlier=OutlierDetection(**_known(OutlierDetection, d.get("outlier", {}))),
        )


def _with_defaults(cls: Any, **values: Any) -> Any:
    return cls(**{k: v for k, v in values.items() if v})


def _known(cls: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


DEFAULT_POLICY = RoutingPolicy()


def _decode(kv: KeyValue) -> RoutingPolicy:
    return RoutingPolicy.from_json(kv.value)


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
        v.items.extend(policy.validate().items)
        v.raise_if_any()
        revision = await self._store.put(keys.routing_policy_key(service), policy.to_json())
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
