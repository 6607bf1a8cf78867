"""The product write-up's own HTTP endpoints, with its paths, headers and
snake_case bodies, over the same RPCs as everything else (Register, GetService,
ListServices, GetTenantConfig, called through the gateway's call path):

    POST /services/register     {name, host, port, protocol, health_endpoint,
                                 tenant_capable, subscription_requirements, resource_tier}
    GET  /services/{name}       one service and its instances
    GET  /services/             the services the caller's tier may use (?legacy_mode=true)
    POST /services/discover     the same answer as GET /services/
    GET  /config/{tenant_id}    {tenant_id, subscription_tier, config: {rate_limits,
                                 features, resource_limits}}
"""

from __future__ import annotations

import json
from typing import Any, NoReturn, Protocol

from aiohttp import web
from aitrading.hub.v1 import config_pb2, health_pb2, registry_pb2, types_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from hub_server.gateway.transcode import parse_bool
from hub_server.kernel.errors import InvalidArgument, Violations
from hub_server.rpc.decoding import Undecodable


class Answered(Protocol):
    @property
    def message(self) -> Message: ...
    @property
    def echo(self) -> list[tuple[str, str]]: ...


class HttpGateway(Protocol):
    """What these routes use of the gateway (hub_server/gateway/server.py)."""

    async def read_body(self, request: web.Request) -> bytes: ...

    async def call(
        self, request: web.Request, method: str, message: Message | Undecodable
    ) -> Answered: ...


PACKAGE = "aitrading.hub.v1"
REGISTER = f"/{PACKAGE}.RegistryService/Register"
GET_SERVICE = f"/{PACKAGE}.RegistryService/GetService"
LIST_SERVICES = f"/{PACKAGE}.RegistryService/ListServices"
GET_HEALTH = f"/{PACKAGE}.HealthService/GetHealth"
GET_TENANT_CONFIG = f"/{PACKAGE}.ConfigService/GetTenantConfig"

# The write-up's registration fields, and the RegisterRequest fields also taken.
REGISTRATION_FIELDS = frozenset(
    {
        "name", "host", "port", "protocol", "health_endpoint", "tenant_capable",
        "subscription_requirements", "resource_tier",
        "instance_id", "version", "metadata", "ttl_seconds", "weight",
    }
)  # fmt: skip


def _enum_name(enum: Any, prefix: str, number: int) -> str:
    """PROTOCOL_HTTP -> "http"; "" when unset."""
    return enum.Name(number).removeprefix(prefix).lower() if number else ""


def _enum_number(enum: Any, prefix: str, value: object, field: str, v: Violations) -> int:
    if isinstance(value, str):
        name = prefix + value.strip().upper()
        if name in enum.keys() and not name.endswith("_UNSPECIFIED"):
            return int(enum.Value(name))
    known = [n.removeprefix(prefix).lower() for n in enum.keys() if not n.endswith("UNSPECIFIED")]
    v.add(field, f"must be one of {', '.join(known)}")
    return 0


def registration(body: Any) -> registry_pb2.RegisterRequest:
    """The write-up's registration body as a RegisterRequest; raises
    InvalidArgument naming every bad field (the rest is the RPC's to check)."""
    if not isinstance(body, dict):
        raise InvalidArgument.single("body", "must be a JSON object")
    v = Violations()
    for key in body.keys() - REGISTRATION_FIELDS:
        v.add(key, "is not a registration field")
    request = registry_pb2.RegisterRequest()
    for key, expected, target in (
        ("name", str, "service"),
        ("host", str, "host"),
        ("port", int, "port"),
        ("instance_id", str, "instance_id"),
        ("version", str, "version"),
        ("ttl_seconds", int, "ttl_seconds"),
        ("weight", int, "weight"),
    ):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, expected) or isinstance(value, bool):
            v.add(key, f"must be a {'string' if expected is str else 'number'}")
        elif isinstance(value, int) and not -(2**31) <= value < 2**31:
            v.add(key, "is out of range")
        else:
            setattr(request, target, value)
    if not body.get("name"):
        v.add("name", "is required")
    if body.get("protocol") is not None:
        request.protocol = _enum_number(
            types_pb2.Protocol, "PROTOCOL_", body["protocol"], "protocol", v
        )
    endpoint = body.get("health_endpoint")
    if endpoint is not None:
        if isinstance(endpoint, str):
            request.health_check.http.path = endpoint
        else:
            v.add("health_endpoint", "must be a path such as /health")
    capable = body.get("tenant_capable")
    if capable is not None:
        if isinstance(capable, bool):
            request.tenant_capable = capable
        else:
            v.add("tenant_capable", "must be true or false")
    requirements = body.get("subscription_requirements")
    if requirements is not None:
        if not isinstance(requirements, list):
            v.add("subscription_requirements", 'must be a list such as ["pro", "enterprise"]')
        else:
            for i, tier in enumerate(requirements):
                number = _enum_number(
                    types_pb2.SubscriptionTier,
                    "SUBSCRIPTION_TIER_",
                    tier,
                    f"subscription_requirements[{i}]",
                    v,
                )
                request.subscription_requirements.append(number)
    if body.get("resource_tier") is not None:
        request.resource_tier = _enum_number(
            types_pb2.ResourceTier, "RESOURCE_TIER_", body["resource_tier"], "resource_tier", v
        )
    metadata = body.get("metadata")
    if metadata is not None:
        if isinstance(metadata, dict) and all(isinstance(x, str) for x in metadata.values()):
            request.metadata.update(metadata)
        else:
            v.add("metadata", "must be an object of strings")
    v.raise_if_any()
    return request


def instance_json(instance: types_pb2.Instance) -> dict[str, Any]:
    """An instance in the write-up's shape (its registration fields, then the
    hub's: health, lease, load)."""
    check = instance.health_check
    health = instance.health
    return {
        "name": instance.service,
        "instance_id": instance.instance_id,
        "host": instance.host,
        "port": instance.port,
        "protocol": _enum_name(types_pb2.Protocol, "PROTOCOL_", instance.protocol),
        "health_endpoint": check.http.path if check.HasField("http") else None,
        "tenant_capable": instance.tenant_capable,
        "subscription_requirements": [
            _enum_name(types_pb2.SubscriptionTier, "SUBSCRIPTION_TIER_", t)
            for t in instance.subscription_requirements
        ],
        "resource_tier": _enum_name(
            types_pb2.ResourceTier, "RESOURCE_TIER_", instance.resource_tier
        ),
        "version": instance.version,
        "metadata": dict(instance.metadata),
        "status": _enum_name(types_pb2.HealthStatus, "HEALTH_STATUS_", health.status) or "unknown",
        "latency": round(health.latency_ms, 3),
        "last_check": health.last_check.ToJsonString() if health.HasField("last_check") else None,
        "load": instance.load_factor,
        "draining": instance.draining,
        "weight": instance.weight,
        "lease_id": instance.lease_id,
        "ttl_seconds": instance.ttl_seconds,
    }


def service_json(service: types_pb2.Service) -> dict[str, Any]:
    return {"name": service.name, "instances": [instance_json(i) for i in service.instances]}


def _values_json(message: Message) -> dict[str, Any]:
    """The set fields of a RateLimits, Features or ResourceLimits by name, as
    JSON numbers and booleans (proto3 JSON would write int64 as strings)."""
    return {
        f.name: getattr(message, f.name)
        for f in message.DESCRIPTOR.fields
        if f.has_presence and message.HasField(f.name)
    }


def tenant_config_json(config: config_pb2.TenantConfig) -> dict[str, Any]:
    """GetTenantConfig's merged view in the write-up's shape."""
    values = config.values
    features = {**dict(values.features.flags), **_values_json(values.features)}
    shaped: dict[str, Any] = {
        "rate_limits": _values_json(values.rate_limits),
        "features": features,
        "resource_limits": _values_json(values.resource_limits),
    }
    if values.HasField("settings") and values.settings.fields:
        shaped["settings"] = json_format.MessageToDict(values.settings)
    return {
        "tenant_id": config.tenant_id,
        "subscription_tier": _enum_name(
            types_pb2.SubscriptionTier, "SUBSCRIPTION_TIER_", config.tier
        ),
        "config": shaped,
    }


def _legacy_mode(request: web.Request, body: Any = None) -> bool:
    raw = request.query.get("legacy_mode")
    if raw is None and isinstance(body, dict):
        value = body.get("legacy_mode", False)
        if not isinstance(value, bool):
            raise InvalidArgument.single("legacy_mode", "must be true or false")
        return value
    return False if raw is None else parse_bool(raw, "legacy_mode")


async def _json_body(gateway: HttpGateway, request: web.Request, *, optional: bool) -> Any:
    raw = await gateway.read_body(request)
    if not raw.strip():
        if optional:
            return None
        raise InvalidArgument.single("body", "must be a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument.single("body", f"is not JSON: {e}") from None


class CompatRoutes:
    def __init__(self, gateway: HttpGateway) -> None:
        self._gateway = gateway

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/services/register", self.register)
        router.add_post("/services/discover", self.discover)
        router.add_get("/services/", self.list_services)
        router.add_get("/services", self.list_services)
        router.add_get("/services/{name}", self.get_service)
        router.add_get("/config/{tenant_id}", self.tenant_config)

    async def _refuse(self, request: web.Request, method: str, error: InvalidArgument) -> NoReturn:
        """Refuses a request whose shape is wrong through the call path, as gRPC
        refuses a request that does not parse: authenticated first, audited."""
        await self._gateway.call(request, method, Undecodable(error))
        raise AssertionError(f"{method} accepted an undecodable request")

    async def register(self, request: web.Request) -> web.StreamResponse:
        try:
            message = registration(await _json_body(self._gateway, request, optional=False))
        except InvalidArgument as e:
            await self._refuse(request, REGISTER, e)
        answer = await self._gateway.call(request, REGISTER, message)
        assert isinstance(answer.message, registry_pb2.RegisterResponse)
        shaped = instance_json(answer.message.instance)
        return web.json_response(shaped, headers=dict(answer.echo))

    async def get_service(self, request: web.Request) -> web.StreamResponse:
        try:
            legacy_mode = _legacy_mode(request)
        except InvalidArgument as e:
            await self._refuse(request, GET_SERVICE, e)
        message = registry_pb2.GetServiceRequest(
            service=request.match_info["name"], legacy_mode=legacy_mode
        )
        answer = await self._gateway.call(request, GET_SERVICE, message)
        assert isinstance(answer.message, registry_pb2.GetServiceResponse)
        return web.json_response(service_json(answer.message.service), headers=dict(answer.echo))

    async def list_services(self, request: web.Request) -> web.StreamResponse:
        try:
            legacy_mode = _legacy_mode(request)
        except InvalidArgument as e:
            await self._refuse(request, LIST_SERVICES, e)
        return await self._services(request, legacy_mode)

    async def discover(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await _json_body(self._gateway, request, optional=True)
            legacy_mode = _legacy_mode(request, body)
        except InvalidArgument as e:
            await self._refuse(request, LIST_SERVICES, e)
        return await self._services(request, legacy_mode)

    async def _services(self, request: web.Request, legacy_mode: bool) -> web.StreamResponse:
        listed: list[types_pb2.Service] = []
        token = ""
        while True:  # every page
            message = registry_pb2.ListServicesRequest(legacy_mode=legacy_mode, page_token=token)
            answer = await self._gateway.call(request, LIST_SERVICES, message)
            assert isinstance(answer.message, registry_pb2.ListServicesResponse)
            listed += answer.message.services
            token = answer.message.next_page_token
            if not token:
                break
        # ListServices sends no health; the write-up's instances carry their
        # status, latency and last check, as GET /services/{name} answers them.
        if any(s.instances for s in listed):
            health = await self._gateway.call(request, GET_HEALTH, health_pb2.GetHealthRequest())
            assert isinstance(health.message, health_pb2.GetHealthResponse)
            known = {(h.service, h.instance_id): h for h in health.message.instances}
            for service in listed:
                for instance in service.instances:
                    found = known.get((instance.service, instance.instance_id))
                    if found is not None and not instance.HasField("health"):
                        instance.health.CopyFrom(found)
        services = [service_json(s) for s in listed]
        return web.json_response({"services": services}, headers=dict(answer.echo))

    async def tenant_config(self, request: web.Request) -> web.StreamResponse:
        message = config_pb2.GetTenantConfigRequest(tenant_id=request.match_info["tenant_id"])
        answer = await self._gateway.call(request, GET_TENANT_CONFIG, message)
        assert isinstance(answer.message, config_pb2.GetTenantConfigResponse)
        return web.json_response(
            tenant_config_json(answer.message.config), headers=dict(answer.echo)
        )
