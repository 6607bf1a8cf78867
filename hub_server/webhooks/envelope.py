"""The event envelope sent to receivers (version 1):

``{"id", "type", "time", "tenant", "data", "version"}``: ``id`` is stable
for the event (the receiver's de-duplication key), ``time`` RFC 3339 UTC,
``tenant`` empty for events of no tenant, ``data`` the type's own fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aitrading.hub.v1 import webhook_pb2

VERSION = 1

# The envelope's "type" of each subscribable event type.
TYPE_NAMES: dict[int, str] = {
    webhook_pb2.WEBHOOK_EVENT_TYPE_CONFIG_CHANGED: "config.changed",
    webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RAISED: "alert.raised",
    webhook_pb2.WEBHOOK_EVENT_TYPE_ALERT_RESOLVED: "alert.resolved",
    webhook_pb2.WEBHOOK_EVENT_TYPE_DEPLOYMENT_CHANGED: "deployment.changed",
    webhook_pb2.WEBHOOK_EVENT_TYPE_INSTANCES_CHANGED: "instances.changed",
}
TEST = "webhook.test"  # sent by TestSubscription only


@dataclass(frozen=True)
class Event:
    id: str
    type: int  # WebhookEventType; 0 for the test event
    time: float
    tenant: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, TEST)

    def body(self) -> bytes:
        """The JSON sent (keys sorted, compact): what the signature covers."""
        return json.dumps(
            {
                "id": self.id,
                "type": self.type_name,
                "time": rfc3339(self.time),
                "tenant": self.tenant,
                "data": self.data,
                "version": VERSION,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def matches(event: Event, event_types: list[int], tenant_id: str) -> bool:
    """Whether a subscription (its types, none: all; its tenant, empty: all) wants it."""
    if event_types and event.type not in event_types:
        return False
    return not tenant_id or event.tenant == tenant_id
