"""HealthService: probe results from the health view.

A caller sees the health of exactly the instances GetService would answer it
(the same tier filter, :func:`hub_server.domain.registry.visible`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aitrading.hub.v1 import health_pb2, health_pb2_grpc, types_pb2

from hub_server.api.context import current
from hub_server.api.registry import _service_name
from hub_server.api.streaming import watch_stream
from hub_server.domain.health import HealthView
from hub_server.domain.registry import RegistryView, visible
from hub_server.store.mirror import REMOVED, Change


class HealthServicer(health_pb2_grpc.HealthServiceServicer):
    def __init__(
        self,
        registry: RegistryView,
        health: HealthView,
        hub_id: str,
        *,
        progress_interval: float = 10.0,
    ) -> None:
        self._registry = registry
        self._health = health
        self._hub_id = hub_id
        self.progress_interval = progress_interval

    def _header(self, revision: int) -> types_pb2.ResponseHeader:
        return types_pb2.ResponseHeader(revision=revision, hub_id=self._hub_id)

    def _current(
        self, service: str, tier: str | None
    ) -> tuple[list[types_pb2.InstanceHealth], int]:
        instances, revision = self._registry.snapshot(service, tier)
        self._health.mirror.ensure_live()
        return [self._health.of(i) for i in instances], max(revision, self._health.mirror.revision)

    async def GetHealth(self, request, context):  # type: ignore[no-untyped-def]
        _service_name(request.service, required=False)
        tier = current().tier_filter(False)
        if request.service:
            # As GetService: NOT_FOUND if unknown, PERMISSION_DENIED if none is visible.
            self._registry.instances(request.service, tier)
        records, revision = self._current(request.service, tier)
        return health_pb2.GetHealthResponse(header=self._header(revision), instances=records)

    async def WatchHealth(self, request, context) -> AsyncIterator[health_pb2.WatchHealthResponse]:  # type: ignore[no-untyped-def,override]
        service = request.service
        _service_name(service, required=False)
        tier = current().tier_filter(False)

        def snapshot() -> tuple[list[types_pb2.InstanceHealth], int]:
            records, _ = self._current(service, tier)
            return records, self._health.mirror.revision

        def select(change: Change[types_pb2.InstanceHealth]) -> types_pb2.InstanceHealth | None:
            # Removals are not sent (a WatchHealthResponse cannot say one): the
            # registry watch reports the instance gone, or gone from the caller's
            # view when its requirements rise above the caller's tier.
            record = change.value
            if change.type == REMOVED or record is None:
                return None
            if service and record.service != service:
                return None
            if tier is not None:
                # Visible as the registry has the instance now; one this replica
                # does not know (yet) is not shown rather than shown unfiltered.
                inst = self._registry.get_instance(record.service, record.instance_id)
                if inst is None or not visible(inst, tier):
                    return None
            return record

        def respond(kind, items, revision, more, compact):  # type: ignore[no-untyped-def]
            return health_pb2.WatchHealthResponse(
                header=self._header(revision),
                kind=kind,
                instances=items,
                compact_revision=compact,
            )

        async for response in watch_stream(
            self._health.mirror.log,
            start_revision=request.start_revision,
            snapshot=snapshot,
            select=select,
            respond=respond,
            progress_interval=self.progress_interval,
            share=("health", service, tier),
        ):
            yield response
