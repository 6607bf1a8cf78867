"""HealthService: probe results from the health view.

A caller sees the health of exactly the instances GetService would answer it
(the same tier filter, :func:`hub_server.registry.service.visible`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeAlias

from aitrading.hub.v1 import health_pb2, health_pb2_grpc, types_pb2

from hub_server.api.registry import _service_name
from hub_server.kernel.tiers import filtered_event_type
from hub_server.registry.service import StoredInstance, removed_instance, visible
from hub_server.rpc.context import current
from hub_server.rpc.header import response_header
from hub_server.rpc.streaming import MergedLog, watch_stream
from hub_server.store import keys
from hub_server.store.event_log import EventLog
from hub_server.store.mirror import ADDED, REMOVED, Change

# What a health watch sends of an instance: its health, or that it left the view.
WatchItem: TypeAlias = types_pb2.InstanceHealth | health_pb2.RemovedInstance


class Followed(Protocol):
    """A view a health watch follows: its changes, and a barrier that catches it
    up with etcd."""

    @property
    def log(self) -> EventLog[Change[Any]]: ...
    async def barrier(self) -> int: ...
    def add_listener(self, listener: Callable[[Change[Any]], None]) -> None: ...


class Instances(Followed, Protocol):
    """What the servicer reads of the registry (hub_server.registry.service.RegistryView)."""

    def snapshot(self, service: str, tier: str | None) -> tuple[list[types_pb2.Instance], int]: ...
    def instances(self, service: str, tier: str | None) -> list[types_pb2.Instance]: ...
    def get_stored(self, service: str, instance_id: str) -> StoredInstance | None: ...


class HealthRecords(Followed, Protocol):
    """What it reads of the health records (hub_server.health.service.HealthView)."""

    @property
    def revision(self) -> int: ...
    def ensure_live(self) -> None: ...
    def of(self, instance: types_pb2.Instance) -> types_pb2.InstanceHealth: ...
    def of_stored(
        self, service: str, instance_id: str, instance: StoredInstance
    ) -> types_pb2.InstanceHealth: ...


class HealthServicer(health_pb2_grpc.HealthServiceServicer):
    def __init__(
        self,
        registry: Instances,
        health: HealthRecords,
        hub_id: str,
        *,
        progress_interval: float = 10.0,
    ) -> None:
        self._registry = registry
        self._health = health
        self._hub_id = hub_id
        self.progress_interval = progress_interval
        # A health watch follows the registry (which instances the caller sees)
        # and the health records (their health), merged in revision order.
        self._log = MergedLog([registry.log, health.log], [registry.barrier, health.barrier])
        registry.add_listener(self._log.notify)
        health.add_listener(self._log.notify)

    def _current(
        self, service: str, tier: str | None
    ) -> tuple[list[types_pb2.InstanceHealth], int]:
        instances, revision = self._registry.snapshot(service, tier)
        self._health.ensure_live()
        return [self._health.of(i) for i in instances], max(revision, self._health.revision)

    async def GetHealth(self, request, context):
        _service_name(request.service, required=False)
        tier = current().tier_filter(False)
        if request.service:
            # As GetService: NOT_FOUND if unknown, PERMISSION_DENIED if none is visible.
            self._registry.instances(request.service, tier)
        records, revision = self._current(request.service, tier)
        return health_pb2.GetHealthResponse(
            header=response_header(self._hub_id, revision), instances=records
        )

    def _watch_item(self, change: Change[Any], service: str, tier: str | None) -> WatchItem | None:
        """What a change of the merged log (registry or health) tells a watcher of
        ``service`` filtered by ``tier``: the instance's health as GetHealth now
        answers it, a removal, or nothing.

        Whether an instance is in the view is the registry's business: its
        changes (filtered as the registry Watch filters them) add and remove
        instances; a health record's changes only update instances in the view.
        """
        if change.key.startswith(keys.REGISTRY):
            inst = removed_instance(change)
            if service and inst.service != service:
                return None
            was = visible(change.previous, tier) if change.previous is not None else None
            kind = filtered_event_type(change.type, was, visible(inst, tier))
            if kind == REMOVED:
                return health_pb2.RemovedInstance(
                    service=inst.service, instance_id=inst.instance_id
                )
            if kind != ADDED:
                return None  # an update within the view: its health did not change
            service_, instance_id = inst.service, inst.instance_id
        else:
            service_, instance_id = keys.parse_pair(keys.HEALTH, change.key)
            if service and service_ != service:
                return None
        # As the instance is now (its later changes follow in the log): one that
        # is gone or not visible now is not shown, and a deleted record (an
        # instance registered again under a new lease) leaves the health of()
        # answers without one.
        current = self._registry.get_stored(service_, instance_id)
        if current is None or not visible(current, tier):
            return None
        return self._health.of_stored(service_, instance_id, current)

    async def WatchHealth(self, request, context) -> AsyncIterator[health_pb2.WatchHealthResponse]:
        service = request.service
        _service_name(service, required=False)
        tier = current().tier_filter(False)

        def snapshot() -> tuple[list[WatchItem], int]:
            records, _ = self._current(service, tier)
            # Where both logs are complete: later changes of the one ahead are in
            # the snapshot already and are sent again (the same state again).
            return list(records), self._log.head

        def select(change: Change[Any]) -> WatchItem | None:
            return self._watch_item(change, service, tier)

        def respond(kind, items, revision, more, compact):
            # The last word on each instance, so that one message never both
            # sends and removes one (the order within a message is not kept).
            last: dict[tuple[str, str], WatchItem] = {}
            for item in items:
                key = (item.service, item.instance_id)
                last.pop(key, None)
                last[key] = item
            return health_pb2.WatchHealthResponse(
                header=response_header(self._hub_id, revision),
                kind=kind,
                instances=[i for i in last.values() if isinstance(i, types_pb2.InstanceHealth)],
                removed=[i for i in last.values() if isinstance(i, health_pb2.RemovedInstance)],
                compact_revision=compact,
            )

        if request.start_revision == 0:
            await self._log.settle()
        async for response in watch_stream(
            self._log,
            start_revision=request.start_revision,
            snapshot=snapshot,
            select=select,
            respond=respond,
            progress_interval=self.progress_interval,
            share=("health", service, tier),
        ):
            yield response
