"""The registry: registering instances (registration.py keeps each one's lease),
discovering services, and the registry watch, which resumes by revision after any
disconnect and turns a resync (history compacted) into just the difference."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aitrading.hub.v1 import registry_pb2, types_pb2

from hub_client._private import to_pb
from hub_client._private.models import EventType, Instance, Service, WatchEvent, lookup
from hub_client._private.registration import Registration
from hub_client._private.resume import each_within, resume_watch
from hub_client._private.transport import Transport

log = logging.getLogger(__name__)

Key = tuple[str, str]

_PROTOCOLS = {
    "http": types_pb2.PROTOCOL_HTTP,
    "https": types_pb2.PROTOCOL_HTTPS,
    "grpc": types_pb2.PROTOCOL_GRPC,
    "tcp": types_pb2.PROTOCOL_TCP,
    "websocket": types_pb2.PROTOCOL_WEBSOCKET,
}
_RESOURCE_TIERS = {
    "basic": types_pb2.RESOURCE_TIER_BASIC,
    "premium": types_pb2.RESOURCE_TIER_PREMIUM,
    "enterprise": types_pb2.RESOURCE_TIER_ENTERPRISE,
}


class RegistryClient:
    """The RegistryService calls; remembers the registrations it made so that
    ``close`` deregisters them."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._registrations: set[Registration] = set()

    async def register(
        self,
        service: str,
        *,
        host: str,
        port: int,
        instance_id: str,
        protocol: str,
        version: str,
        metadata: Mapping[str, str] | None,
        health: types_pb2.HealthCheck | None,
        tenant_capable: bool,
        subscription_requirements: Sequence[str],
        resource_tier: str,
        ttl: int,
        weight: int,
        keep_alive: bool,
        timeout: float | None = None,
    ) -> Registration:
        tiers = [
            lookup(to_pb.TIERS, t, "subscription_requirements") for t in subscription_requirements
        ]
        request = registry_pb2.RegisterRequest(
            service=service,
            instance_id=instance_id,
            host=host,
            port=port,
            protocol=lookup(_PROTOCOLS, protocol, "protocol"),
            version=version,
            metadata=dict(metadata or {}),
            health_check=health,
            tenant_capable=tenant_capable,
            subscription_requirements=tiers,
            resource_tier=lookup(_RESOURCE_TIERS, resource_tier, "resource_tier"),
            ttl_seconds=ttl,
            weight=weight,
        )
        reg = Registration(self._transport, request)
        await reg.start(keep_alive=keep_alive, timeout=timeout)
        self._registrations.add(reg)
        reg.on_close = self._registrations.discard
        return reg

    async def discover(
        self,
        service: str,
        *,
        legacy_mode: bool,
        include_unhealthy: bool,
        timeout: float | None = None,
    ) -> Service:
        t = self._transport
        resp = await t.call(
            t.registry_stub.GetService,
            registry_pb2.GetServiceRequest(
                service=service, legacy_mode=legacy_mode, include_unhealthy=include_unhealthy
            ),
            timeout=timeout,
        )
        return Service.from_pb(resp.service, resp.header.revision)

    async def list_services(
        self, *, legacy_mode: bool, timeout: float | None = None
    ) -> list[Service]:
        t = self._transport
        budget = t.budget(timeout)  # for all pages together
        out: list[Service] = []
        token = ""
        while True:
            resp = await t.call(
                t.registry_stub.ListServices,
                registry_pb2.ListServicesRequest(legacy_mode=legacy_mode, page_token=token),
                timeout=budget.left(),
            )
            out.extend(Service.from_pb(s, resp.header.revision) for s in resp.services)
            token = resp.next_page_token
            if not token:
                return out

    def watch(
        self,
        service: str,
        *,
        legacy_mode: bool,
        start_revision: int,
        timeout: float | None = None,
    ) -> AsyncIterator[WatchEvent]:
        events = watch_registry(self._transport, service, legacy_mode, start_revision)
        return each_within(events, timeout, f"watch {service or 'all services'}")

    async def close(self) -> None:
        """Deregisters every instance registered here and not deregistered yet."""
        await asyncio.gather(
            *(r.deregister() for r in list(self._registrations)), return_exceptions=True
        )


async def watch_registry(
    transport: Transport, service: str, legacy_mode: bool, start_revision: int
) -> AsyncIterator[WatchEvent]:
    known: dict[Key, Instance] = {}
    snapshot: dict[Key, Instance] | None = None

    def open_stream(start: int) -> Any:
        nonlocal snapshot
        snapshot = {} if start == 0 else None  # 0: the hub starts with a snapshot
        return transport.open_stream(
            transport.registry_stub.Watch,
            registry_pb2.WatchRequest(
                service=service, start_revision=start, legacy_mode=legacy_mode
            ),
        )

    stream = resume_watch(open_stream, start_revision=start_revision)
    async with contextlib.aclosing(stream):
        async for resp in stream:
            kind = resp.kind
            if kind == registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT:
                assert snapshot is not None
                for m in resp.instances:
                    inst = Instance.from_pb(m)
                    snapshot[(inst.service, inst.instance_id)] = inst
                if resp.more:
                    continue
                for event in _diff(known, snapshot, resp.header.revision):
                    yield event
                known, snapshot = snapshot, None
            elif kind == registry_pb2.WATCH_RESPONSE_KIND_EVENTS:
                for m in resp.events:
                    inst = Instance.from_pb(m.instance)
                    key = (inst.service, inst.instance_id)
                    if m.type == registry_pb2.WATCH_EVENT_TYPE_REMOVED:
                        known.pop(key, None)
                    else:
                        known[key] = inst
                    yield WatchEvent(_event_type(m.type), inst, m.revision)
            elif kind == registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED:
                log.info("watch history compacted at %d; resyncing", resp.compact_revision)


def _event_type(value: int) -> EventType:
    """A type this client does not know (a newer hub's) reads as UPDATED: the
    instance is still there, with what the event carries."""
    try:
        return EventType(value)
    except ValueError:
        return EventType.UPDATED


def _diff(old: dict[Key, Instance], new: dict[Key, Instance], revision: int) -> list[WatchEvent]:
    """Events that turn ``old`` into ``new``; all ``initial`` on a first snapshot."""
    first = not old
    events = [
        WatchEvent(EventType.REMOVED, inst, revision) for key, inst in old.items() if key not in new
    ]
    for key, inst in new.items():
        before = old.get(key)
        if before is None:
            events.append(WatchEvent(EventType.ADDED, inst, inst.revision or revision, first))
        elif before.revision != inst.revision:
            events.append(WatchEvent(EventType.UPDATED, inst, inst.revision))
    return events
