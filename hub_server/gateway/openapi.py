"""An OpenAPI 3.1 document of the HTTP/JSON API, generated from the same route
table the gateway serves (the protos' ``google.api.http`` annotations) and the
messages' descriptors: ``make gen`` writes it to gen/openapi/hub.json
(scripts/gen_openapi.py), the hub serves it at ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.rpc import status_pb2

from hub_client import version_info
from hub_server.gateway.routes import Route

Schema = dict[str, Any]
STATUS = status_pb2.Status.DESCRIPTOR
TENANT_HEADERS = {
    "x-tenant-id": "The tenant (honoured from gateway and admin callers; a bound credential's "
    "tenant wins).",
    "x-subscription-tier": "free, pro or enterprise: filters discovery for callers without a "
    "tenant record.",
    "x-user-id": "The end user, recorded in audit records.",
    "x-company-id": "Alias of x-tenant-id.",
    "x-correlation-id": "Echoed back; one is made when absent.",
}
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
_INT32 = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
)
_INT64 = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


class _Schemas:
    """Component schemas of every message and enum reached, by full name."""

    def __init__(self) -> None:
        self.components: dict[str, Schema] = {}

    def message(self, descriptor: Descriptor) -> Schema:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages
            self.components[name] = {
                "type": "object",
                "properties": {f.json_name: self.field(f) for f in descriptor.fields},
            }
        return _ref(name)

    def enum(self, descriptor: EnumDescriptor) -> Schema:
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {
                "type": "string",
                "enum": [v.name for v in descriptor.values],
            }
        return _ref(name)

    def scalar(self, field: FieldDescriptor) -> Schema:
        t = field.type
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        if t == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if t in _INT32:
            return {"type": "integer", "format": "int32"}
        if t in _INT64:  # proto3 JSON writes 64-bit integers as strings
            return {"type": ["string", "integer"], "format": "int64"}
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number"}
        if t == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        return {"type": "string"}

    def field(self, field: FieldDescriptor) -> Schema:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value = entry.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.scalar(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.scalar(field)}
        return self.scalar(field)


def _query_fields(descriptor: Descriptor, depth: int = 0) -> list[tuple[str, FieldDescriptor]]:
    """The fields a query string can set, by name (nested ones dotted)."""
    found: list[tuple[str, FieldDescriptor]] = []
    for f in descriptor.fields:
        nested_type = f.message_type
        if nested_type is not None and nested_type.full_name not in (
            "google.protobuf.Timestamp",
            "google.protobuf.Duration",
        ):
            if not f.is_repeated and depth < 2:
                nested = _query_fields(nested_type, depth + 1)
                found += [(f"{f.name}.{name}", g) for name, g in nested]
            continue
        found.append((f.name, f))
    return found


def _operation(route: Route, schemas: _Schemas, operation_id: str) -> Schema:
    method = route.method
    service = method.containing_service
    parameters: list[Schema] = [{"$ref": f"#/components/parameters/{h}"} for h in TENANT_HEADERS]
    path_fields = set(route.variables)
    for name in route.variables:
        parameters.append(
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if route.body != "*":
        for name, f in _query_fields(method.input_type):
            top = name.split(".")[0]
            if name in path_fields or top == route.body:
                continue
            parameters.append({"name": name, "in": "query", "schema": schemas.field(f)})
    operation: Schema = {
        "operationId": operation_id,
        "summary": f"{service.name}.{method.name}",
        "tags": [service.name],
        "parameters": parameters,
        "responses": {
            "default": {
                "description": "An error: a google.rpc.Status with its details",
                "content": {"application/json": {"schema": schemas.message(STATUS)}},
            }
        },
    }
    if route.body:
        schema = (
            schemas.message(method.input_type)
            if route.body == "*"
            else schemas.field(method.input_type.fields_by_name[route.body])
        )
        operation["requestBody"] = {
            "required": route.body != "*",
            "content": {"application/json": {"schema": schema}},
        }
    output = schemas.message(method.output_type)
    if route.streaming:
        parameters.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "description": "Resume after this revision (an event's id)",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        )
        operation["responses"]["200"] = {
            "description": (
                f"Server-Sent Events: each event's data is a {method.output_type.full_name} "
                "(the schema below), its id the revision it brings the caller up to; a last "
                "`status` event (a google.rpc.Status) ends a stream the hub ends"
            ),
            "content": {"text/event-stream": {"schema": output}},
        }
    else:
        operation["responses"]["200"] = {
            "description": method.output_type.full_name,
            "content": {"application/json": {"schema": output}},
        }
    return operation


def document(routes: Iterable[Route]) -> Schema:
    schemas = _Schemas()
    paths: dict[str, dict[str, Schema]] = {}
    used: dict[str, int] = {}
    for route in routes:
        base = f"{route.method.containing_service.name}_{route.method.name}"
        used[base] = used.get(base, 0) + 1
        operation_id = base if used[base] == 1 else f"{base}{used[base]}"
        paths.setdefault(route.template, {})[route.http_method.lower()] = _operation(
            route, schemas, operation_id
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Central Hub HTTP/JSON API",
            "version": version_info().version,
            "description": (
                "The hub's gRPC API transcoded by its google.api.http annotations: "
                "proto3 JSON bodies (lowerCamelCase written, either spelling read), errors "
                "as google.rpc.Status, server streams as Server-Sent Events."
            ),
        },
        "security": [{"bearer": []}, {}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                header: {
                    "name": header,
                    "in": "header",
                    "required": False,
                    "description": description,
                    "schema": {"type": "string"},
                }
                for header, description in TENANT_HEADERS.items()
            },
        },
    }
