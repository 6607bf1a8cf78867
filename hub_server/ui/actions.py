"""Operator actions from the dashboard: the same authorization (the one role
table, by the gRPC method's full name), the same servicer code, and an audit
record like the one a gRPC call leaves."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aitrading.hub.v1 import observability_pb2 as obs
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from hub_server.api.circuits import CircuitBreakerServicer
from hub_server.api.deployments import DeploymentServicer
from hub_server.deployments import rollout
from hub_server.kernel.errors import HubError, InvalidArgument, NotFound, PermissionDenied
from hub_server.rpc.errors import status_code_for
from hub_server.store import keys

if TYPE_CHECKING:
    from hub_server.app import Hub
    from hub_server.auth.credentials import Identity

log = logging.getLogger(__name__)

PACKAGE = "aitrading.hub.v1"


def method_name(short: str) -> str:
    """``Service/Method`` -> the full gRPC method name the role table knows."""
    return f"/{PACKAGE}.{short}"


def authenticate(hub: Hub, headers: Sequence[tuple[str, str]]) -> Identity:
    """Who the caller is (Unauthenticated if its token is unknown or missing
    where one is required), by the hub's authorizer, the gRPC API's: without
    credentials configured everyone is the anonymous admin."""
    return hub.authorizer.authenticate(list(headers))


def authorize(hub: Hub, method: str, headers: Sequence[tuple[str, str]]) -> Identity:
    """Who the caller is, if the role table lets it call ``method``; raises
    Unauthenticated or PermissionDenied."""
    identity = authenticate(hub, headers)
    hub.authorizer.check_method(identity, method)
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


@dataclass(frozen=True)
class Action:
    # Calls the servicer method with the parsed request.
    call: Callable[[Message], Awaitable[Message]]
    # What the audit record names as changed.
    target: Callable[[Message], str]
    # The state before the change ("" if unknown); after it, from the response.
    before: Callable[[Message], str]
    after: Callable[[Message], str]


def _state_of(message: Message) -> str:
    for name in ("circuit", "deployment"):
        inner = getattr(message, name, None)
        if inner is not None:
            field = inner.DESCRIPTOR.fields_by_name["state"]
            value = field.enum_type.values_by_number.get(inner.state)
            return value.name.split("_STATE_", 1)[-1] if value else str(inner.state)
    return ""


class Actions:
    """The few RPCs the dashboard may call, by their full method names."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        circuits = CircuitBreakerServicer(hub.circuits, hub.hub_id)
        deployments = DeploymentServicer(hub.deployments, hub.hub_id)

        def circuit_before(r: Any) -> str:
            return str(hub.circuits.get(r.service, r.instance_id).circuit.state.name)

        def deployment_before(r: Any) -> str:
            stored = hub.deployments.mirror.items.get(keys.deployment_key(r.id))
            return rollout.state_name(stored.deployment.state) if stored else ""

        def deployment(op: Callable[[Any, None], Awaitable[Message]]) -> Action:
            return Action(
                call=lambda r: op(r, None),
                target=lambda r: f"deployment/{r.id}",  # type: ignore[attr-defined]
                before=deployment_before,
                after=_state_of,
            )

        self.table: dict[str, Action] = {
            method_name("CircuitBreakerService/OverrideCircuit"): Action(
                call=lambda r: circuits.OverrideCircuit(r, None),
                target=lambda r: f"circuit/{r.service}/{r.instance_id or '*'}",  # type: ignore[attr-defined]
                before=circuit_before,
                after=_state_of,
            ),
            method_name("DeploymentService/PauseDeployment"): deployment(
                deployments.PauseDeployment
            ),
            method_name("DeploymentService/ResumeDeployment"): deployment(
                deployments.ResumeDeployment
            ),
            method_name("DeploymentService/AbortDeployment"): deployment(
                deployments.AbortDeployment
            ),
            method_name("DeploymentService/ReleaseDeploymentDrains"): deployment(
                deployments.ReleaseDeploymentDrains
            ),
        }

    async def run(
        self,
        method: str,
        body: Mapping[str, Any],
        headers: Sequence[tuple[str, str]],
        peer: str,
    ) -> Message:
        """Authorizes, calls, audits; raises HubError (mapped to an HTTP status by
        the caller). ``body`` is the request message in proto3 JSON."""
        action = self.table.get(method)
        if action is None:
            raise NotFound(f"{method} is not an action the dashboard offers")
        identity: Identity | None = None
        request: Message | None = None
        note = {"via": "dashboard", "peer": peer}
        outcome, before, after = "OK", "", ""
        try:
            identity = authenticate(self._hub, headers)
            self._hub.authorizer.check_method(identity, method)
            request = _parse(method, body)
            before = action.before(request)
            response = await action.call(request)
            after = action.after(response)
            return response
        except HubError as e:
            outcome = status_code_for(e).name
            raise
        except Exception:
            outcome = "INTERNAL"
            raise
        finally:
            await self._audit(identity, method, request, action, outcome, before, after, note)

    async def _audit(
        self,
        identity: Identity | None,
        method: str,
        request: Message | None,
        action: Action,
        outcome: str,
        before: str,
        after: str,
        note: dict[str, str],
    ) -> None:
        if request is not None:
            for field in ("action", "reason"):
                descriptor = request.DESCRIPTOR.fields_by_name.get(field)
                if descriptor is None:
                    continue
                value = getattr(request, field)
                if descriptor.enum_type is not None:
                    value = descriptor.enum_type.values_by_number[value].name
                if value:
                    note[field] = str(value)
        event = obs.AuditEvent(
            caller=caller_name(identity) if identity is not None else note["peer"],
            method=method,
            target=action.target(request) if request is not None else "",
            outcome=outcome,
            version_before=before,
            version_after=after,
            details=note,
        )
        try:
            await self._hub.audit.append(event)
        except Exception as e:  # the action's outcome stands; the gap is logged
            log.error("audit record of dashboard %s %s lost: %r", method, event.target, e)


def _parse(method: str, body: Mapping[str, Any]) -> Message:
    """The method's request message from its proto3 JSON form."""
    service, _, rpc = method.strip("/").rpartition("/")
    descriptor = descriptor_pool.Default().FindServiceByName(service).methods_by_name[rpc]
    request = message_factory.GetMessageClass(descriptor.input_type)()
    try:
        json_format.ParseDict(dict(body), request)
    except json_format.ParseError as e:
        raise InvalidArgument.single("body", str(e)) from None
    return request
