"""Operator actions from the dashboard: each is the gRPC method itself, called in
process through the handler the gRPC server runs (hub_server/rpc/inprocess.py),
so authorization, the audit record, error mapping and telemetry are the call
wrapper's. The audit record says the call came from the dashboard."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from hub_server.auth.authorizer import Authorizer
from hub_server.auth.credentials import Identity
from hub_server.kernel.errors import InvalidArgument, NotFound, PermissionDenied
from hub_server.rpc.decoding import Undecodable
from hub_server.rpc.inprocess import InProcess

PACKAGE = "aitrading.hub.v1"

# The few RPCs the dashboard may call.
ACTIONS = frozenset(
    f"/{PACKAGE}.{short}"
    for short in (
        "CircuitBreakerService/OverrideCircuit",
        "DeploymentService/PauseDeployment",
        "DeploymentService/ResumeDeployment",
        "DeploymentService/AbortDeployment",
        "DeploymentService/ReleaseDeploymentDrains",
    )
)


def method_name(short: str) -> str:
    """``Service/Method`` -> the full gRPC method name the role table knows."""
    return f"/{PACKAGE}.{short}"


def authorize(authorizer: Authorizer, method: str, headers: Sequence[tuple[str, str]]) -> Identity:
    """Who the caller is, if the role table lets it call ``method``; raises
    Unauthenticated or PermissionDenied. Without credentials configured everyone
    is the anonymous admin."""
    identity = authorizer.authenticate(list(headers))
    authorizer.check_method(identity, method)
    return identity


def caller_name(identity: Identity) -> str:
    return identity.name


def check_fleet_reader(identity: Identity) -> None:
    """The dashboard shows every tenant: a credential bound to one may not use it."""
    tenant = identity.tenant
    if tenant:
        raise PermissionDenied(
            f"{caller_name(identity)} is bound to tenant {tenant!r}; "
            "the dashboard shows the whole fleet"
        )


class Actions:
    def __init__(self, in_process: InProcess) -> None:
        self._in_process = in_process

    async def run(
        self,
        method: str,
        body: Mapping[str, Any],
        headers: Sequence[tuple[str, str]],
        peer: str,
    ) -> Message:
        """The method's response; raises CallAborted with the status a gRPC
        caller would get (mapped to an HTTP status by the caller). ``body`` is
        the request message in proto3 JSON: one that does not parse is refused
        and audited as a gRPC request that does not parse."""
        if method not in ACTIONS:
            raise NotFound(f"{method} is not an action the dashboard offers")
        return await self._in_process.call(
            method,
            _parse(method, body),
            metadata=headers,
            peer=peer,
            origin={"via": "dashboard", "peer": peer},
        )


def _parse(method: str, body: Mapping[str, Any]) -> Message | Undecodable:
    """The method's request message from its proto3 JSON form."""
    service, _, rpc = method.strip("/").rpartition("/")
    descriptor = descriptor_pool.Default().FindServiceByName(service).methods_by_name[rpc]
    request = message_factory.GetMessageClass(descriptor.input_type)()
    try:
        json_format.ParseDict(dict(body), request)
    except json_format.ParseError as e:
        return Undecodable(InvalidArgument.single("body", str(e)))
    return request
