"""Who may call what: the one role table of the hub's gRPC API.

Every RPC of every hub service has exactly one row (tests/test_auth_logic.py
checks the table against the protos' descriptors, so a new RPC cannot ship
without deciding who may call it). Admin may call everything and is not listed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything
    GATEWAY = "gateway"  # reads, and acts for any tenant (its tenant headers are trusted)
    SERVICE = "service"  # its own instances; reads what its tenant may read; reports
    READER = "reader"  # read-only


class Scope(enum.Enum):
    """What a bound caller (a service or reader token tied to a tenant or a
    service) may touch through this RPC, besides the role check."""

    # Tenant data is chosen by the request's tenant_id fields: a tenant-bound
    # caller gets its own tenant filled in and may name no other.
    TENANT = "tenant"
    # The request's `service` must be the caller's bound service.
    OWN_SERVICE = "own_service"
    # Data across all tenants with no tenant field to narrow it: a
    # tenant-bound caller may not call it.
    FLEET = "fleet"


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[Role]
    scope: Scope = Scope.TENANT


A, G, S, R = Role.ADMIN, Role.GATEWAY, Role.SERVICE, Role.READER


def _rule(*roles: Role, scope: Scope = Scope.TENANT) -> Rule:
    return Rule(frozenset((A, *roles)), scope)


READ = _rule(G, S, R)
ADMIN_ONLY = _rule()

# Full method name -> who may call it.
RULES: dict[str, Rule] = {
    f"/aitrading.hub.v1.{service}/{rpc}": rule
    for service, rpcs in {
        "RegistryService": {
            "Register": _rule(S, scope=Scope.OWN_SERVICE),
            "KeepAlive": _rule(S, scope=Scope.OWN_SERVICE),
            "Deregister": _rule(S, scope=Scope.OWN_SERVICE),
            "GetService": READ,
            "ListServices": READ,
            "Watch": READ,
        },
        "HealthService": {"GetHealth": READ, "WatchHealth": READ},
        "LoadBalancerService": {
            "PickEndpoint": READ,
            "ReportLoad": _rule(S, scope=Scope.OWN_SERVICE),
            "SetRoutingPolicy": ADMIN_ONLY,
            "GetRoutingPolicy": READ,
            "DeleteRoutingPolicy": ADMIN_ONLY,
            "WatchEndpoints": READ,
        },
        "CircuitBreakerService": {
            "ReportOutcomes": _rule(G, S),
            "GetCircuitState": READ,
            "WatchCircuits": READ,
            "SetCircuitSettings": ADMIN_ONLY,
            "OverrideCircuit": ADMIN_ONLY,
        },
        # xDS clients' node ids, peers and tenants are operators' business.
        "ClusterService": {"GetClusterStatus": READ, "ListXdsClients": ADMIN_ONLY},
        "ConfigService": {
            "GetTenantConfig": READ,
            "GetConfigLayer": READ,
            "SetConfigLayer": ADMIN_ONLY,
            "ListConfigVersions": READ,
            "RollbackConfig": ADMIN_ONLY,
            "WatchConfig": READ,
        },
        "TenantService": {
            "CreateTenant": ADMIN_ONLY,
            "GetTenant": READ,
            "ListTenants": _rule(G, R, scope=Scope.FLEET),
            "UpdateTenantTier": ADMIN_ONLY,
            "CheckQuota": READ,
            "Allocate": _rule(G, S),
            "Release": _rule(G, S),
            "GetUsage": READ,
        },
        "ObservabilityService": {
            "ListAlerts": READ,
            "WatchAlerts": READ,
            "ListAuditEvents": _rule(R),
            "ReportErrors": _rule(G, S, scope=Scope.OWN_SERVICE),
            "ListErrorPatterns": READ,
            "GetSystemMetrics": _rule(G, R, scope=Scope.FLEET),
        },
        "DeploymentService": {
            "StartDeployment": ADMIN_ONLY,
            "GetDeployment": _rule(R),
            "ListDeployments": _rule(R),
            "WatchDeployment": _rule(R),
            "PauseDeployment": ADMIN_ONLY,
            "ResumeDeployment": ADMIN_ONLY,
            "AbortDeployment": ADMIN_ONLY,
            "RollbackDeployment": ADMIN_ONLY,
            "ReleaseDeploymentDrains": ADMIN_ONLY,
            "WatchDirectives": _rule(S, R, scope=Scope.OWN_SERVICE),
        },
        "BackupService": {
            "CreateBackup": ADMIN_ONLY,
            "RestoreBackup": ADMIN_ONLY,
            "ListBackups": _rule(R, scope=Scope.FLEET),
            "DeleteBackup": ADMIN_ONLY,
        },
        # Targets, secrets and delivery records are operators' business only.
        "WebhookService": {
            "CreateSubscription": ADMIN_ONLY,
            "ListSubscriptions": ADMIN_ONLY,
            "DeleteSubscription": ADMIN_ONLY,
            "TestSubscription": ADMIN_ONLY,
            "RotateSecret": ADMIN_ONLY,
            "ListDeliveries": ADMIN_ONLY,
        },
    }.items()
    for rpc, rule in rpcs.items()
}

# envoy's aggregated discovery service (hub_server/api/xds.py), the one RPC the
# hub serves outside its own API: proxyless gRPC clients read the services their
# tier may use, as GetService does (the state-of-the-world variant only).
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
RULES[ADS_METHOD] = READ

# Standard services every caller may use, with or without credentials: load
# balancers and orchestrators probe grpc.health.v1, and reflection only
# describes the API.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_open(method: str) -> bool:
    return method.startswith(OPEN_PREFIXES)


def rule_for(method: str) -> Rule:
    """The method's rule; an unknown method is admin-only (fail closed)."""
    return RULES.get(method, ADMIN_ONLY)
