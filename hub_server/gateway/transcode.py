"""HTTP requests to request messages and messages to JSON, as the
``google.api.http`` rules say: the body (all of it for ``body: "*"``, one field
for ``body: "field"``), then path variables, then query parameters (the other
fields, ``a.b`` for nested ones, repeated by repeating the parameter), in
proto3 JSON: either field spelling accepted, lowerCamelCase written.

A request that does not parse becomes an ``Undecodable``: the call path refuses
it as INVALID_ARGUMENT naming the field, audited like a gRPC request that does
not parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

from hub_server.gateway.routes import Route
from hub_server.kernel.errors import InvalidArgument
from hub_server.rpc.decoding import Undecodable

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def request_class(route: Route) -> type[Message]:
    return message_factory.GetMessageClass(route.method.input_type)


def response_class(route: Route) -> type[Message]:
    return message_factory.GetMessageClass(route.method.output_type)


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    found = descriptor.fields_by_name.get(name)
    if found is None:
        found = next((f for f in descriptor.fields if f.json_name == name), None)
    return found


def parse_bool(value: str, name: str) -> bool:
    """A query or path string as a boolean; InvalidArgument naming the field if not one."""
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidArgument.single(name, "must be true or false")


def _scalar(field: FieldDescriptor, value: str, name: str) -> Any:
    """A query or path string as the JSON value ParseDict takes for the field."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        return parse_bool(value, name)
    return value  # numbers, enums (name or number), strings, Timestamps: ParseDict reads them


def _place(
    target: dict[str, Any], descriptor: Descriptor, path: str, values: list[str], *, origin: str
) -> None:
    """Sets ``values`` at the dotted field ``path`` of the JSON dict ``target``."""
    names = path.split(".")
    for i, name in enumerate(names):
        field = _field(descriptor, name)
        if field is None:
            raise InvalidArgument.single(path, f"is not a field of {descriptor.name} ({origin})")
        last = i == len(names) - 1
        message_type = field.message_type
        if not last:
            if message_type is None or field.is_repeated:
                raise InvalidArgument.single(path, f"{name} has no fields ({origin})")
            nested = target.setdefault(field.name, {})
            if not isinstance(nested, dict):
                raise InvalidArgument.single(path, "is given twice")
            target, descriptor = nested, message_type
            continue
        if message_type is not None and message_type.full_name not in (
            "google.protobuf.Timestamp",
            "google.protobuf.Duration",
        ):
            raise InvalidArgument.single(path, f"is a message: send it in the body ({origin})")
        if field.is_repeated:
            target[field.name] = [_scalar(field, v, path) for v in values]
        else:
            if len(values) > 1:
                raise InvalidArgument.single(path, f"is given {len(values)} times ({origin})")
            target[field.name] = _scalar(field, values[0], path)


def _body(route: Route, raw: bytes) -> dict[str, Any]:
    if not route.body:
        return {}
    if not raw.strip():
        parsed: Any = {}
    else:
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument.single("body", f"is not JSON: {e}") from None
    if route.body == "*":
        if not isinstance(parsed, dict):
            raise InvalidArgument.single("body", "must be a JSON object")
        return parsed
    return {route.body: parsed}


def build_request(
    route: Route,
    variables: dict[str, str],
    query: Iterable[tuple[str, str]],
    raw_body: bytes,
) -> Message | Undecodable:
    """The route's request message, or the refusal its call will answer with."""
    descriptor = route.method.input_type
    try:
        data = _body(route, raw_body)
        by_name: dict[str, list[str]] = {}
        for key, value in query:
            by_name.setdefault(key, []).append(value)
        if route.body != "*":  # with body "*" every field is in the body
            for key, values in by_name.items():
                _place(data, descriptor, key, values, origin="query parameter")
        for key, value in variables.items():  # the path wins over body and query
            _place(data, descriptor, key, [value], origin="path")
        request = request_class(route)()
        json_format.ParseDict(data, request)
    except InvalidArgument as e:
        return Undecodable(e)
    except json_format.ParseError as e:
        return Undecodable(InvalidArgument.single("body", str(e)))
    return request


def to_json(message: Message) -> dict[str, Any]:
    """proto3 JSON: lowerCamelCase names, enums by name, unset fields left out."""
    return json_format.MessageToDict(message)


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    """A google.rpc.Status with its details (ErrorInfo, BadRequest, QuotaFailure)."""
    return json_format.MessageToDict(status)
