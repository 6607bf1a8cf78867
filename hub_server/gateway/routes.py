"""The hub's HTTP routes, read from the ``google.api.http`` annotations of its
protos: one table built from the descriptors (the HTTP server's router and the
OpenAPI document both come from it), no route written by hand per method.

A path template is ``/literal/{field}/...`` with an optional ``:verb`` after
the last segment (``/v1/deployments/{id}:pause``); a variable names a request
field (``{layer.tenant_id}`` a nested one) and matches one segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

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
from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor

HUB_FILES: tuple[FileDescriptor, ...] = tuple(
    module.DESCRIPTOR
    for module in (
        registry_pb2,
        health_pb2,
        balancer_pb2,
        circuit_pb2,
        config_pb2,
        tenant_pb2,
        deployment_pb2,
        observability_pb2,
        cluster_pb2,
        backup_pb2,
        webhook_pb2,
    )
)
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"^\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?:=\*)?\}$")


class NoRoute(Exception):
    """No route has this path (404)."""


class MethodNotAllowed(Exception):
    """Routes have this path, not with this HTTP method (405)."""

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


@dataclass(frozen=True)
class Route:
    http_method: str  # upper case
    template: str  # as annotated: /v1/services/{service}
    segments: tuple[str, ...]  # literals, and variables as "{field.path}"
    verb: str  # after ":" on the last segment; "" for none
    body: str  # "*" (the whole request), a field name, or "" (no body)
    method: MethodDescriptor

    @property
    def grpc_method(self) -> str:
        """``/package.Service/Method``, as the call path names it."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        """A server stream: served as Server-Sent Events."""
        return bool(self.method.server_streaming)

    @property
    def variables(self) -> list[str]:
        return [s[1:-1] for s in self.segments if s.startswith("{")]

    def match(self, segments: list[str], verb: str) -> dict[str, str] | None:
        """The path variables when the (split, verb-stripped) path matches."""
        if verb != self.verb or len(segments) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for mine, theirs in zip(self.segments, segments, strict=True):
            if mine.startswith("{"):
                if not theirs:
                    return None
                found[mine[1:-1]] = unquote(theirs)
            elif mine != theirs:
                return None
        return found


def _parse_template(template: str, where: str) -> tuple[tuple[str, ...], str]:
    if not template.startswith("/"):
        raise ValueError(f"{where}: path {template!r} must start with /")
    path, verb = template, ""
    last = template.rsplit("/", 1)[1]
    if ":" in last and not last.endswith("}"):
        path, verb = template.rsplit(":", 1)
    segments = tuple(path[1:].split("/"))
    for segment in segments:
        if "{" in segment and not _VARIABLE.match(segment):
            raise ValueError(f"{where}: unsupported path segment {segment!r} in {template!r}")
    return segments, verb


def _rules(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    yield from rule.additional_bindings


def routes_of(service: ServiceDescriptor) -> list[Route]:
    """The routes a service's methods declare (none for unannotated methods)."""
    routes = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        where = f"{service.full_name}.{method.name}"
        if method.client_streaming:
            raise ValueError(f"{where}: a client stream has no HTTP form")
        for rule in _rules(options.Extensions[annotations_pb2.http]):
            kind = rule.WhichOneof("pattern")
            if kind not in HTTP_METHODS:
                raise ValueError(f"{where}: unsupported HTTP pattern {kind!r}")
            template = getattr(rule, kind)
            segments, verb = _parse_template(template, where)
            if rule.body not in ("", "*") and rule.body not in method.input_type.fields_by_name:
                raise ValueError(f"{where}: body {rule.body!r} is not a request field")
            routes.append(Route(kind.upper(), template, segments, verb, rule.body, method))
    return routes


def hub_routes(files: Iterable[FileDescriptor] = HUB_FILES) -> list[Route]:
    return [r for f in files for s in f.services_by_name.values() for r in routes_of(s)]


class Router:
    """Finds the route of a request. A route with a verb wins over one without
    (``/v1/services/x:pick`` is PickEndpoint's, never GetService's)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        # Verb routes first, then by literal segments first: the most specific wins.
        self._ordered = sorted(
            self.routes,
            key=lambda r: (not r.verb, [s.startswith("{") for s in r.segments]),
        )

    def find(self, http_method: str, path: str) -> tuple[Route, dict[str, str]]:
        segments = path[1:].split("/") if path.startswith("/") else [path]
        last, verb = segments[-1], ""
        stripped = last
        if ":" in last:
            stripped, verb = last.rsplit(":", 1)
        allowed: list[str] = []
        matched_verb = False
        for route in self._ordered:
            if route.verb:
                if not verb:
                    continue
                found = route.match([*segments[:-1], stripped], verb)
            else:
                if matched_verb:
                    break
                found = route.match(segments, "")
            if found is None:
                continue
            matched_verb = matched_verb or bool(route.verb)
            if route.http_method == http_method:
                return route, found
            allowed.append(route.http_method)
        if allowed:
            raise MethodNotAllowed(sorted(set(allowed)))
        raise NoRoute(path)
