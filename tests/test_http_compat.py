"""The product write-up's own HTTP requests, sent unchanged with httpx to a
hub's --http-listen address: registration, discovery by name, tier-filtered
listing and discovery by tenant headers, a tenant's config; then its global
config update and deployment request through the transcoded routes, as the
README shows them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub_server.app import Hub
from tests.support.hubs import HubFactory


@pytest.fixture
async def hub(hub_factory: HubFactory) -> Hub:
    return await hub_factory(http_listen="127.0.0.1:0")


@pytest.fixture
def central_hub(hub: Hub) -> str:
    assert hub.http is not None
    return hub.http.url


@pytest.fixture
async def client(central_hub: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def names(body: dict[str, Any]) -> list[str]:
    return sorted(s["name"] for s in body["services"])


async def test_the_write_ups_registration_and_discovery_run_unchanged(
    central_hub: str, client: httpx.AsyncClient
) -> None:
    # register_with_central_hub()
    response = await client.post(
        f"{central_hub}/services/register",
        json={
            "name": "data-bridge",
            "host": "data-bridge",
            "port": 8001,
            "protocol": "http",
            "health_endpoint": "/health",
        },
    )
    assert response.status_code == 200, response.text
    registered = response.json()
    assert registered["name"] == "data-bridge" and registered["lease_id"] > 0
    assert registered["instance_id"] == "data-bridge-8001"
    # discover_service("data-bridge")
    response = await client.get(f"{central_hub}/services/data-bridge")
    assert response.status_code == 200
    found = response.json()
    assert found["name"] == "data-bridge"
    (instance,) = found["instances"]
    assert {k: instance[k] for k in ("host", "port", "protocol", "health_endpoint")} == {
        "host": "data-bridge",
        "port": 8001,
        "protocol": "http",
        "health_endpoint": "/health",
    }
    assert instance["tenant_capable"] is True and instance["subscription_requirements"] == []

    # EnhancedServiceRegistration: subscription requirements and resource tier.
    response = await client.post(
        f"{central_hub}/services/register",
        json={
            "name": "ml-processing",
            "host": "ml-processing",
            "port": 8005,
            "tenant_capable": True,
            "subscription_requirements": ["pro", "enterprise"],
            "resource_tier": "premium",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["subscription_requirements"] == ["pro", "enterprise"]
    assert response.json()["resource_tier"] == "premium"

    def headers(tier: str) -> dict[str, str]:
        # What the write-up's API gateway forwards.
        return {"x-user-id": "u-1", "x-tenant-id": "company_abc", "x-subscription-tier": tier}

    response = await client.get(f"{central_hub}/services/", headers=headers("free"))
    assert names(response.json()) == ["data-bridge"]
    response = await client.get(f"{central_hub}/services/", headers=headers("pro"))
    assert names(response.json()) == ["data-bridge", "ml-processing"]
    assert response.headers["x-tenant-id"] == "company_abc"
    response = await client.get(f"{central_hub}/services/")  # no tenant context: all
    assert names(response.json()) == ["data-bridge", "ml-processing"]
    response = await client.get(
        f"{central_hub}/services/?legacy_mode=true", headers=headers("free")
    )
    assert names(response.json()) == ["data-bridge", "ml-processing"]
    for tier in ("free", "pro"):
        listed = await client.get(f"{central_hub}/services/", headers=headers(tier))
        discovered = await client.post(f"{central_hub}/services/discover", headers=headers(tier))
        assert discovered.status_code == 200
        assert discovered.json() == listed.json()
    # A free caller may not see the pro service by name either.
    response = await client.get(f"{central_hub}/services/ml-processing", headers=headers("free"))
    assert response.status_code == 403 and response.json()["code"] == 7


async def test_bad_registrations_name_their_fields(
    central_hub: str, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        f"{central_hub}/services/register",
        json={
            "name": "x",
            "host": "h",
            "port": "8001",
            "protocol": "carrier-pigeon",
            "subscription_requirements": ["gold"],
            "colour": "blue",
        },
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 3
    bad = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))
    fields = {v["field"] for v in bad["fieldViolations"]}
    assert fields == {"port", "protocol", "subscription_requirements[0]", "colour"}
    response = await client.post(f"{central_hub}/services/register", content=b"{not json")
    assert response.status_code == 400
    response = await client.get(f"{central_hub}/services/nowhere")
    assert response.status_code == 404 and response.json()["code"] == 5


async def test_listed_instances_carry_their_health_as_a_lookup_does(
    central_hub: str, client: httpx.AsyncClient
) -> None:
    # No health endpoint: healthy while its lease lives, on every route.
    response = await client.post(
        f"{central_hub}/services/register",
        json={"name": "quotes", "host": "10.0.0.9", "port": 8010, "protocol": "http"},
    )
    assert response.status_code == 200, response.text
    (one,) = (await client.get(f"{central_hub}/services/quotes")).json()["instances"]
    assert one["status"] == "healthy"
    for listed in (
        await client.get(f"{central_hub}/services/"),
        await client.post(f"{central_hub}/services/discover"),
    ):
        (service,) = listed.json()["services"]
        (instance,) = service["instances"]
        assert instance["status"] == "healthy"
        assert {k: instance[k] for k in ("latency", "last_check")} == {
            k: one[k] for k in ("latency", "last_check")
        }


async def test_a_tenants_config_in_the_write_ups_shape(
    central_hub: str, client: httpx.AsyncClient
) -> None:
    response = await client.get(
        f"{central_hub}/config/company_abc", headers={"x-subscription-tier": "pro"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "tenant_id": "company_abc",
        "subscription_tier": "pro",
        "config": {
            "rate_limits": {"api_calls_per_hour": 10000, "websocket_connections": 50},
            "features": {"basic_analytics": True, "advanced_ai": True, "custom_models": False},
            "resource_limits": {"max_concurrent_requests": 100, "max_data_storage_mb": 1000},
        },
    }


async def test_the_global_config_update_and_deployment_go_through_transcoded_routes(
    central_hub: str, client: httpx.AsyncClient
) -> None:
    # update_global_config(): the write-up's per-tier rate limits are the tier
    # defaults layers; here the free tier's, then a global feature.
    response = await client.put(
        f"{central_hub}/v1/config/layers",
        json={
            "layer": {"kind": "CONFIG_LAYER_KIND_TIER_DEFAULTS", "tier": "SUBSCRIPTION_TIER_FREE"},
            "values": {
                "rateLimits": {"apiCallsPerHour": 50, "websocketConnections": 5},
                "features": {"basicAnalytics": True, "advancedAi": False, "customModels": False},
                "resourceLimits": {"maxConcurrentRequests": 10, "maxDataStorageMb": 100},
            },
            "comment": "free tier: 50 calls per hour",
        },
    )
    assert response.status_code == 200, response.text
    response = await client.put(
        f"{central_hub}/v1/config/layers",
        json={
            "layer": {"kind": "CONFIG_LAYER_KIND_GLOBAL"},
            "values": {"features": {"flags": {"maintenance_banner": True}}},
        },
    )
    assert response.status_code == 200, response.text
    response = await client.get(
        f"{central_hub}/config/company_xyz", headers={"x-subscription-tier": "free"}
    )
    config = response.json()["config"]
    assert config["rate_limits"]["api_calls_per_hour"] == 50
    assert config["features"]["maintenance_banner"] is True

    # coordinate_deployment(): StartDeployment.
    for i in (1, 2, 3):
        response = await client.post(
            f"{central_hub}/v1/services/trading-engine/instances",
            json={
                "instanceId": f"te-{i}",
                "host": f"10.0.1.{i}",
                "port": 9000,
                "version": "v2.0.0",
            },
        )
        assert response.status_code == 200, response.text
    response = await client.post(
        f"{central_hub}/v1/deployments",
        json={
            "service": "trading-engine",
            "targetVersion": "v2.1.0",
            "strategy": "DEPLOYMENT_STRATEGY_ROLLING",
            "settings": {"batchSize": 2},
        },
    )
    assert response.status_code == 200, response.text
    deployment = response.json()["deployment"]
    assert deployment["service"] == "trading-engine" and deployment["targetVersion"] == "v2.1.0"
    response = await client.get(f"{central_hub}/v1/deployments/{deployment['id']}")
    assert response.status_code == 200
    response = await client.post(
        f"{central_hub}/v1/deployments/{deployment['id']}:abort", json={"reason": "test"}
    )
    assert response.status_code == 200, response.text


async def test_a_bad_body_is_refused_after_authentication_as_on_grpc(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    from tests.support.auth import credentials_text, secret

    credentials = tmp_path / "credentials.toml"
    credentials.write_text(credentials_text())
    hub = await hub_factory(http_listen="127.0.0.1:0", credentials_file=credentials)
    assert hub.http is not None
    async with httpx.AsyncClient(base_url=hub.http.url, timeout=10) as web:
        bad = {"name": "x", "port": "many"}
        r = await web.post("/services/register", json=bad)
        assert r.status_code == 401  # who asks comes first
        admin = {"Authorization": f"Bearer {secret('admin')}"}
        r = await web.post("/services/register", json=bad, headers=admin)
        assert r.status_code == 400
        r = await web.get("/services/", params={"legacy_mode": "perhaps"})
        assert r.status_code == 401
        r = await web.get("/services/", params={"legacy_mode": "perhaps"}, headers=admin)
        assert r.status_code == 400
    # The refusal is audited as the call it was.
    events, _, _ = await hub.services.audit.list(
        method="/aitrading.hub.v1.RegistryService/Register"
    )
    assert sorted(e.outcome for e in events) == ["INVALID_ARGUMENT", "UNAUTHENTICATED"]
    assert [e.caller for e in events if e.outcome == "INVALID_ARGUMENT"] == ["token:ops"]
