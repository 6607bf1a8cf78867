"""Turning the hub's change logs (mirror changes) into webhook events.

An event's id is derived from the etcd revision and key of the change it
comes from, so the same change always makes the same id, whichever replica
turns it into an event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from aitrading.hub.v1 import deployment_pb2, observability_pb2, webhook_pb2
from google.protobuf.json_format import MessageToDict

from hub_server.config.merge import StoredLayer
from hub_server.deployments.service import StoredDeployment
from hub_server.kernel.changes import ADDED, REMOVED, UPDATED
from hub_server.registry.service import StoredInstance, removed_instance
from hub_server.store import keys
from hub_server.store.mirror import Change
from hub_server.webhooks.envelope import Event

_CHANGE_NAMES = {ADDED: "added", UPDATED: "updated", REMOVED: "removed"}

ToEvents = Callable[[Change[Any], float], list[Event]]

# The event types each source's function below makes: a source no subscription
# wants is not turned into events at all (an instance's JSON, built for each
# registry change, was ~30% of a hub's CPU under mass registration).
CONFIG_TYPES = frozenset({webhook_pb2.WEBHOOK_EVENT_TYPE_CONFIG_CHANGED})
ALERT_TYPES = frozenset(
    {webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RAISED, webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RESOLVED}
)
DEPLOYMENT_TYPES = frozenset({webhook_pb2.WEBHOOK_EVENT_TYPE_DEPLOYMENT_CHANGED})
INSTANCE_TYPES = frozenset({webhook_pb2.WEBHOOK_EVENT_TYPE_INSTANCES_CHANGED})


def event_id(change: Change[Any]) -> str:
    digest = hashlib.sha256(change.key).hexdigest()[:12]
    return f"evt_{change.revision:x}_{digest}"


def _dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=False)


def config_events(change: Change[StoredLayer], now: float) -> list[Event]:
    """config.changed: a layer written, rolled back or removed; the tenant's id
    for a tenant layer, none for the global and tier layers."""
    layer = keys.parse_config_layer_key(change.key)
    kind, _, name = layer.partition("/")
    data: dict[str, Any] = {"layer": layer, "change": _CHANGE_NAMES[change.type]}
    if change.value is not None:
        data |= {"version": change.value.version, "updated_by": change.value.updated_by}
    tenant = name if kind == "tenant" else ""
    return [
        Event(event_id(change), webhook_pb2.WEBHOOK_EVENT_TYPE_CONFIG_CHANGED, now, tenant, data)
    ]


def alert_events(change: Change[observability_pb2.Alert], now: float) -> list[Event]:
    """alert.raised when an active alert appears, alert.resolved when it goes."""
    if change.type == UPDATED or change.value is None:
        return []
    raised = change.type == ADDED
    kind = (
        webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RAISED
        if raised
        else webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RESOLVED
    )
    data = _dict(change.value)
    data["active"] = raised
    return [Event(event_id(change), kind, now, change.value.tenant_id, data)]


def deployment_events(change: Change[StoredDeployment], now: float) -> list[Event]:
    """deployment.changed: every change of a deployment's record (its state, batch)."""
    if change.value is None:
        return []
    d = change.value.deployment
    data = {
        "id": d.id,
        "service": d.service,
        "target_version": d.target_version,
        "state": deployment_pb2.DeploymentState.Name(d.state)
        if d.state in deployment_pb2.DeploymentState.values()
        else str(d.state),
        "phase": d.phase,
        "current_batch": d.current,
        "reason": d.reason,
        "removed": change.type == REMOVED,
    }
    return [
        Event(event_id(change), webhook_pb2.WEBHOOK_EVENT_TYPE_DEPLOYMENT_CHANGED, now, "", data)
    ]


def instance_events(change: Change[StoredInstance], now: float) -> list[Event]:
    """instances.changed: an instance of a service registered, changed or left."""
    service, instance_id = keys.parse_instance_key(change.key)
    data: dict[str, Any] = {
        "service": service,
        "instance_id": instance_id,
        "change": _CHANGE_NAMES[change.type],
    }
    if change.value is not None:
        data["instance"] = _dict(removed_instance(change))
    kind = webhook_pb2.WEBHOOK_EVENT_TYPE_INSTANCES_CHANGED
    return [Event(event_id(change), kind, now, "", data)]
