"""RegistryService: check the request, call the registry, fill the header."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator

from aitrading.hub.v1 import registry_pb2, registry_pb2_grpc, types_pb2

from hub_server.api.context import current
from hub_server.domain import validation
from hub_server.domain.errors import InvalidArgument, Violations
from hub_server.domain.registry import Registry, removed_instance, visible, watch_event
from hub_server.store.mirror import Change

log = logging.getLogger(__name__)

MAX_PAGE = 1000
SNAPSHOT_CHUNK = 500


def _service_name(service: str, *, required: bool = True) -> None:
    v = Violations()
    validation.check_dns_label(v, "service", service, required=required)
    v.raise_if_any()


def _decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except Exception as e:
        raise InvalidArgument.single("page_token", "is not a token this hub issued") from e
    if not raw.startswith("after:"):
        raise InvalidArgument.single("page_token", "is not a token this hub issued")
    return raw[len("after:") :]


def _encode_page_token(last: str) -> str:
    return base64.urlsafe_b64encode(f"after:{last}".encode()).decode()


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, hub_id: str, *, progress_interval: float = 10.0):
        self._registry = registry
        self._view = registry.view
        self._hub_id = hub_id
        self.progress_interval = progress_interval

    def _header(self, revision: int) -> types_pb2.ResponseHeader:
        return types_pb2.ResponseHeader(revision=revision, hub_id=self._hub_id)

    async def Register(self, request, context):  # type: ignore[no-untyped-def]
        inst = await self._registry.register(request)
        return registry_pb2.RegisterResponse(header=self._header(inst.mod_revision), instance=inst)

    async def KeepAlive(self, request, context):  # type: ignore[no-untyped-def]
        ttl = await self._registry.keep_alive(
            request.service, request.instance_id, request.lease_id
        )
        return registry_pb2.KeepAliveResponse(
            header=self._header(self._view.revision), ttl_seconds=ttl
        )

    async def Deregister(self, request, context):  # type: ignore[no-untyped-def]
        revision = await self._registry.deregister(request.service, request.instance_id)
        return registry_pb2.DeregisterResponse(header=self._header(revision))

    async def GetService(self, request, context):  # type: ignore[no-untyped-def]
        _service_name(request.service)
        tier = current().tier_filter(request.legacy_mode)
        instances = self._view.instances(request.service, tier)
        return registry_pb2.GetServiceResponse(
            header=self._header(self._view.revision),
            service=types_pb2.Service(name=request.service, instances=instances),
        )

    async def ListServices(self, request, context):  # type: ignore[no-untyped-def]
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidArgument.single("page_size", f"must be between 0 and {MAX_PAGE}")
        after = _decode_page_token(request.page_token)
        size = request.page_size or MAX_PAGE
        tier = current().tier_filter(request.legacy_mode)
        services = [s for s in self._view.list_services(tier) if s[0] > after]
        page, rest = services[:size], services[size:]
        return registry_pb2.ListServicesResponse(
            header=self._header(self._view.revision),
            services=[types_pb2.Service(name=name, instances=inst) for name, inst in page],
            next_page_token=_encode_page_token(page[-1][0]) if rest else "",
        )

    async def Watch(self, request, context) -> AsyncIterator[registry_pb2.WatchResponse]:  # type: ignore[no-untyped-def,override]
        _service_name(request.service, required=False)
        if request.start_revision < 0:
            raise InvalidArgument.single("start_revision", "must not be negative")
        tier = current().tier_filter(request.legacy_mode)
        try:
            async for response in self._watch(request.service, request.start_revision, tier):
                yield response
        except asyncio.CancelledError:
            log.debug("registry watch cancelled by the client")
            raise

    async def _watch(
        self, service: str, start_revision: int, tier: str | None
    ) -> AsyncIterator[registry_pb2.WatchResponse]:
        view, events_log = self._view, self._view.log
        if start_revision == 0:
            instances, cursor = view.snapshot(service, tier)
            header = self._header(cursor)
            for i in range(0, max(len(instances), 1), SNAPSHOT_CHUNK):
                yield registry_pb2.WatchResponse(
                    header=header,
                    kind=registry_pb2.WATCH_RESPONSE_KIND_SNAPSHOT,
                    instances=instances[i : i + SNAPSHOT_CHUNK],
                    more=i + SNAPSHOT_CHUNK < len(instances),
                )
        else:
            cursor = start_revision - 1

        def wanted(change: Change[types_pb2.Instance]) -> bool:
            inst = removed_instance(change)
            return (not service or inst.service == service) and visible(inst, tier)

        last_sent = time.monotonic()
        while True:
            await events_log.wait(cursor, self.progress_interval)
            events = events_log.since(cursor)
            head = events_log.head
            if events is None:
                yield registry_pb2.WatchResponse(
                    header=self._header(head),
                    kind=registry_pb2.WATCH_RESPONSE_KIND_RESYNC_REQUIRED,
                    compact_revision=events_log.complete_after + 1,
                )
                return
            # One message for everything new, so that no revision is ever split
            # across messages and header.revision is always a safe resume point.
            matching = [watch_event(c) for c in events if wanted(c)]
            if matching:
                yield registry_pb2.WatchResponse(
                    header=self._header(head),
                    kind=registry_pb2.WATCH_RESPONSE_KIND_EVENTS,
                    events=matching,
                )
                last_sent = time.monotonic()
            cursor = max(cursor, head)
            if time.monotonic() - last_sent >= self.progress_interval:
                yield registry_pb2.WatchResponse(
                    header=self._header(cursor), kind=registry_pb2.WATCH_RESPONSE_KIND_PROGRESS
                )
                last_sent = time.monotonic()
