"""The OpenAPI document: generated at build time (gen/openapi/hub.json, by
`make gen`), valid OpenAPI 3, the one a hub serves at /openapi.json, and every
route it documents answers over HTTP (no route is a 404 of the router or a 405)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from openapi_spec_validator import validate

from tests.support.hubs import HubFactory

GENERATED = Path(__file__).resolve().parent.parent / "gen" / "openapi" / "hub.json"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def routing_miss(response: httpx.Response) -> bool:
    """A 405, or a 404 that is the router's (a call's NOT_FOUND carries the
    hub's google.rpc.ErrorInfo: the route answered, the thing is missing)."""
    if response.status_code == 405:
        return True
    if response.status_code != 404:
        return False
    details = response.json().get("details", [])
    return not any(d.get("@type") == ERROR_INFO for d in details)


async def test_the_served_document_is_the_generated_one_and_valid(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(http_listen="127.0.0.1:0")
    assert hub.http is not None
    async with httpx.AsyncClient(base_url=hub.http.url, timeout=10) as web:
        response = await web.get("/openapi.json")
    assert response.status_code == 200
    served = response.json()
    validate(served)
    assert served["openapi"].startswith("3.")
    generated = json.loads(GENERATED.read_text())
    assert served == generated, "gen/openapi/hub.json is stale: run make gen"
    # The backup transfer streams have no HTTP form; the rest do.
    operations = {op["operationId"] for path in served["paths"].values() for op in path.values()}
    assert "BackupService_CreateBackup" not in operations
    assert "BackupService_RestoreBackup" not in operations
    assert {"RegistryService_Register", "ConfigService_SetConfigLayer"} <= operations
    assert "DeploymentService_StartDeployment" in operations


def _fill(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", template)


async def test_every_documented_route_answers(hub_factory: HubFactory) -> None:
    hub = await hub_factory(http_listen="127.0.0.1:0")
    assert hub.http is not None
    doc: dict[str, Any] = json.loads(GENERATED.read_text())
    checked = 0
    async with httpx.AsyncClient(base_url=hub.http.url, timeout=10) as web:
        for template, operations in doc["paths"].items():
            for method, operation in operations.items():
                body = {} if "requestBody" in operation else None
                async with web.stream(method.upper(), _fill(template), json=body) as response:
                    if response.status_code != 200:
                        await response.aread()
                    assert not routing_miss(response), (method, template, response.text)
                checked += 1
    assert checked == sum(len(ops) for ops in doc["paths"].values()) > 40
