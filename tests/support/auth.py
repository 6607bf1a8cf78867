"""Callers in auth tests: named tokens, the credentials file that holds them,
call metadata that presents them, and the RPCs every role is checked against."""

from __future__ import annotations

from aitrading.hub.v1 import (
    backup_pb2,
    balancer_pb2,
    circuit_pb2,
    cluster_pb2,
    config_pb2,
    deployment_pb2,
    health_pb2,
    observability_pb2,
    registry_pb2,
    tenant_pb2,
    webhook_pb2,
)
from envoy.service.discovery.v3 import ads_pb2

from hub_server.auth.credentials import token_entry
from hub_server.auth.roles import ADS_METHOD, Role

# who -> (name, role, tenant, service)
TOKENS = {
    "admin": ("ops", Role.ADMIN, "", ""),
    "gateway": ("edge", Role.GATEWAY, "", ""),
    "service": ("orders@acme", Role.SERVICE, "acme", "orders"),
    "reader": ("dash", Role.READER, "", ""),
    "acme-reader": ("acme-dash", Role.READER, "acme", ""),
}

PB2_MODULES = (
    backup_pb2,
    balancer_pb2,
    circuit_pb2,
    cluster_pb2,
    config_pb2,
    deployment_pb2,
    health_pb2,
    observability_pb2,
    registry_pb2,
    tenant_pb2,
    webhook_pb2,
)


def secret(who: str) -> str:
    return f"secret-of-{who}"


def credentials_text(tokens: dict[str, tuple[str, Role, str, str]] = TOKENS) -> str:
    return "".join(
        token_entry(name, role, secret(who), tenant=tenant, service=service)
        for who, (name, role, tenant, service) in tokens.items()
    )


def md(who: str | None, **headers: str) -> list[tuple[str, str]]:
    """Call metadata: ``who``'s token and the given headers (``_`` becomes ``-``)."""
    out = [(k.replace("_", "-"), v) for k, v in headers.items()]
    if who is not None:
        out.append(("authorization", f"Bearer {secret(who)}"))
    return out


def every_rpc() -> dict[str, object]:
    """Full method name -> method descriptor, for every RPC the hub serves: its
    own services', and envoy's ADS (state of the world; not the delta variant)."""
    found = {}
    for module in PB2_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                found[f"/{service.full_name}/{m.name}"] = m
    ads = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"]
    found[ADS_METHOD] = ads.methods_by_name["StreamAggregatedResources"]
    return found
